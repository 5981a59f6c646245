"""Sandbox profiles: TOML text -> frozen Profile -> compiled seccomp BPF.

    from warden.profiles import load_profile, ProfileError
    from warden.profiles.compiler import compile_policy

    profile = load_profile("default")          # or a path, or a name on the search path
    code = compile_policy(profile.seccomp)     # struct sock_filter[] bytes for this arch

The public names load on first use (PEP 562): `from warden.profiles.model import …`
costs only the model, not the parser, the syscall tables or libseccomp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warden.profiles.errors import ProfileError
    from warden.profiles.loader import builtin_names, load_profile, load_text

_WHERE = {
    "ProfileError": "warden.profiles.errors",
    "builtin_names": "warden.profiles.loader",
    "load_profile": "warden.profiles.loader",
    "load_text": "warden.profiles.loader",
}

__all__ = ["ProfileError", "builtin_names", "load_profile", "load_text"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'warden.profiles' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
