"""Sandbox profiles: TOML text -> frozen Profile -> compiled seccomp BPF."""
