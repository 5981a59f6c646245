"""The commented starter file `warden profile new NAME --from PARENT` writes."""

from __future__ import annotations

TEMPLATE = '''\
# {name}: a warden sandbox profile.
#
# It starts as "{parent}" and changes only what is written below. Every
# section is optional; an absent key keeps the parent's value, and the
# parent's own defaults are the safe ones (deny, every namespace new,
# nothing bound, no network, no variables).
#
#   warden profile check {path}          # errors point at file:line:column
#   warden profile show {name}           # every rule and where it came from
#   warden profile explain {name} openat # what the compiled filter does
#   warden profile diff {parent} {name}

description = "Describe what runs under this profile"
extends = "{parent}"
# include = ["common.toml"]   # fragments, relative to this file

[seccomp]
# default-action = "kill-process"   # or "errno ENOSYS", "trap", "log", "user-notify"
# System calls and @groups to allow (see docs/profiles.md for every group):
# allow = ["@network-io"]
# Explicit denials win over groups; they answer deny-action (default EPERM):
# deny = ["ptrace"]
# deny-action = "errno EPERM"
# Drop everything inherited for these calls before adding this file's rules:
# reset = ["socket"]

# A rule with argument conditions (all must hold). Constants such as AF_INET,
# CLONE_NEWUSER or TIOCSTI are resolved for you.
# [[seccomp.rules]]
# syscall = "socket"
# action = "allow"
# args = ["arg0 == AF_INET6"]
# why = "say why this is safe"

[namespaces]
# net = false        # share the host network: only for network clients

[filesystem]
# ro = ["/opt/tool", {{ source = "/etc/tool.conf", optional = true }}]
# rw = [{{ source = "/srv/data", dest = "/data" }}]
# tmpfs = [{{ dest = "/run", size = "16M" }}]
# chdir = "/"

[limits]
# memory = "512M"
# processes = 32
# open-files = 128
# cpu-time = 60       # seconds
# wall-time = 120     # seconds

[environment]
# keep = ["LANG"]
# set = {{ MODE = "sandboxed" }}
'''


def starter(name: str, parent: str, path: str) -> str:
    return TEMPLATE.format(name=name, parent=parent, path=path)
