from warden.supervisor.cli import main

main()
