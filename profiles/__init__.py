"""Sandbox profiles: TOML text -> frozen Profile -> compiled seccomp BPF.

    from profiles import load_profile, ProfileError
    from profiles.compiler import compile_policy

    profile = load_profile("default")          # or a path, or a name on the search path
    code = compile_policy(profile.seccomp)     # struct sock_filter[] bytes for this arch
"""

from profiles.errors import ProfileError
from profiles.loader import builtin_names, load_profile, load_text

__all__ = ["ProfileError", "builtin_names", "load_profile", "load_text"]
