"""atheris harness for the profile pipeline: any text must load and compile, or
raise ProfileError, and the compiled filter must mean what the profile says.

Usage (the built-in profiles seed the corpus):
    python tests/profiles/fuzz/fuzz_profile.py --seeds DIR [libFuzzer flags...] DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["warden.profiles"]):
    from warden.profiles import ProfileError, compiler, load_text

BUILTIN = ROOT / "profiles" / "builtin"


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        # search_path=[] and no extends/include of real files beyond the built-ins
        profile = load_text(text, file="fuzz.toml", search_path=[])
        compiler.compile_policy(profile.seccomp)  # verifies its own meaning
    except ProfileError as e:
        str(e)


def main() -> None:
    args = sys.argv[:]
    if "--seeds" in args:
        i = args.index("--seeds")
        directory = Path(args[i + 1])
        del args[i : i + 2]
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(BUILTIN.glob("*.toml")):
            (directory / f"seed-{path.stem}").write_bytes(path.read_bytes())
    os.chdir(BUILTIN)  # relative includes in seeds (strict.toml) resolve
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
