"""The root of every error warden raises on purpose, and the CLI's exit codes.

Each layer has one base of its own (`warden.profiles.errors.ProfileError`,
`warden.ipc.errors.IpcError`, `warden.supervisor.sandbox.errors.SandboxError`,
`warden.supervisor.errors.SupervisorError`), and every concrete error is also
one of the reaction classes below, which say what the caller must do:

    except warden.errors.InvalidInput:   # fix what you gave (profile, option, path, config)
    except warden.errors.Unavailable:    # this host lacks a mechanism: see the message
    except warden.errors.ChildFailed:    # a child died or misbehaved; warden carried on
    except warden.errors.WardenError:    # anything else warden raised on purpose

This module imports nothing: every layer, profiles and ipc included, may use it.
"""

from __future__ import annotations

# The CLI's exit codes for failures of warden itself, as env(1), timeout(1) and
# nsjail use them, so a program's own exit codes 1..124 stay its own.
EXIT_SETUP = 125          # warden could not set the sandbox up (bad input or host)
EXIT_NOT_EXECUTABLE = 126  # the program was found but could not be executed
EXIT_NOT_FOUND = 127      # the program was not found inside the sandbox


class WardenError(Exception):
    """Anything warden raises on purpose."""


class InvalidInput(WardenError):
    """What the caller gave is wrong (a profile, an option, a path, a config, a
    declaration): the message names it; fix it and try again. Exit 125 on the CLI."""


class Unavailable(WardenError):
    """This host or kernel lacks something the request needs (a namespace, a
    seccomp feature, a cgroup controller): the message says what and what to do."""


class ChildFailed(WardenError):
    """A child died, misbehaved or could not start; warden killed it if it still
    ran, recorded why, and carried on. Retrying gets a new child."""


class OutOfCapacity(WardenError):
    """A limit of the supervisor (workers, fds, memory, queue) would be passed:
    try later, or raise the limit."""
