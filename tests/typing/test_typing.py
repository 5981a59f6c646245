"""mypy checks typed pool calls against the interface: right ones pass, wrong ones fail."""

from __future__ import annotations

import os
import re

import pytest

api = pytest.importorskip("mypy.api")

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKED = os.path.join(HERE, "check_pool_remote.py")


def test_mypy_checks_typed_pool_calls(tmp_path: object) -> None:
    stdout, stderr, _code = api.run(["--strict", "--no-error-summary", "--show-error-codes",
                                     "--cache-dir", os.path.join(str(tmp_path), "cache"),
                                     CHECKED])
    assert not stderr
    errors: dict[int, str] = {}
    for line in stdout.splitlines():
        if ": note: " in line:
            continue
        m = re.match(r".*check_pool_remote\.py:(\d+): error: (.*)", line)
        assert m, f"mypy reported something outside the checked file: {line}"
        errors.setdefault(int(m.group(1)), m.group(2))
    with open(CHECKED) as f:
        source = f.read().splitlines()
    expected = {n for n, text in enumerate(source, 1) if "# error:" in text}
    assert len(expected) == 9
    assert set(errors) == expected, stdout
    wrong_type = next(n for n in expected if '"text"' in source[n - 1])
    assert errors[wrong_type] == (
        'No overload variant of "call" of "Pool" matches argument types '
        '"Callable[[Parser, Context, bytes, int], Parsed]", "str"  [call-overload]')
    wrong_kw = next(n for n in expected if 'limit="5"' in source[n - 1])
    assert errors[wrong_kw] == ('Argument "limit" to "call" of "Pool" has incompatible type '
                                '"str"; expected "int"  [arg-type]')
