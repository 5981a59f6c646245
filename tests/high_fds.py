"""A process that holds descriptors numbered past 1024, as a busy supervisor does.

select() cannot watch such descriptors (ValueError: filedescriptor out of
range in select()), so every wait in the sandbox and the supervisor must use
poll; the tests that use this fixture start sandboxes and workers while
every new descriptor lands above 1024.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest

HIGH = 1024


@pytest.fixture
def high_fds() -> Iterator[int]:
    """Fill the descriptor table up past 1024; yields the first fd number free after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HIGH + 512
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want) if soft != resource.RLIM_INFINITY
                                                else soft, hard))
    held: list[int] = []
    try:
        base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        held.append(base)
        while held[-1] < HIGH + 8:
            held.append(os.dup(base))
            os.set_inheritable(held[-1], False)
        probe = os.dup(base)
        os.close(probe)
        assert probe > HIGH, probe
        yield probe
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
