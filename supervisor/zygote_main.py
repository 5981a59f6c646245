"""`python -m warden.supervisor.zygote_main [MODULE...]`: the zygote's entry point
inside its sandbox."""

from warden.supervisor.zygote import main

if __name__ == "__main__":
    main()
