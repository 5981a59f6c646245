"""Sandbox profiles: TOML text -> frozen Profile -> compiled seccomp BPF.

    from profiles import load_profile, ProfileError
    from profiles.compiler import compile_policy

    profile = load_profile("default")          # or a path, or a name on the search path
    code = compile_policy(profile.seccomp)     # struct sock_filter[] bytes for this arch

The public names load on first use (PEP 562): `from profiles.model import …`
costs only the model, not the parser, the syscall tables or libseccomp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from profiles.errors import ProfileError
    from profiles.loader import builtin_names, load_profile, load_text

_WHERE = {
    "ProfileError": "profiles.errors",
    "builtin_names": "profiles.loader",
    "load_profile": "profiles.loader",
    "load_text": "profiles.loader",
}

__all__ = ["ProfileError", "builtin_names", "load_profile", "load_text"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'profiles' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
