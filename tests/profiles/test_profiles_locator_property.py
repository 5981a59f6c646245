"""The locator finds every value tomllib parsed, in generated TOML documents."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from warden.profiles.locator import Locator

Path = tuple[Hashable, ...]

keys = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True),
    st.text(alphabet='ab .=[]#"\\é', min_size=1, max_size=6).map(lambda s: json.dumps(s)),
)
strings = st.one_of(
    st.text(alphabet='ab #[]{}=,"\\\'\n', max_size=8).map(json.dumps),
    st.text(alphabet="ab #[]{}=,\"", max_size=8).map(lambda s: f"'{s}'"),
    st.text(alphabet="ab #[]{}=,\"\n", max_size=8).map(lambda s: f"'''{s}'''"),
)
scalars = st.one_of(st.integers(-1000, 1000).map(str), st.sampled_from(["true", "false"]), strings)


def values(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3).map(lambda items: ("array", items)),
        st.dictionaries(keys, inner, max_size=3).map(lambda d: ("inline", d)),
    )


def render(value: object, path: Path, expect: dict[Path, str], multiline: bool) -> str:
    if isinstance(value, str):
        expect[path] = value
        return value
    kind, body = value  # type: ignore[misc]
    if kind == "array":
        parts = [render(v, (*path, i), expect, multiline) for i, v in enumerate(body)]
        sep = ",\n  # note [x]\n  " if multiline else ", "
        text = "[" + sep.join(parts) + "]"
    else:
        parts = []
        for k, v in body.items():
            parts.append(f"{k} = {render(v, (*path, _unquote(k)), expect, False)}")
        text = "{" + ", ".join(parts) + "}"
    expect[path] = text[0]
    return text


def _unquote(key: str) -> str:
    return json.loads(key) if key.startswith('"') else key


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, st.dictionaries(keys, values(2), max_size=4), min_size=1, max_size=3),
       st.booleans())
def test_every_value_is_located(doc: dict[str, dict[str, object]], multiline: bool) -> None:
    expect: dict[Path, str] = {}
    lines = ["# generated"]
    for table, body in doc.items():
        lines.append(f"[{table}]  # a table")
        for k, v in body.items():
            lines.append(f"{k} = {render(v, (_unquote(table), _unquote(k)), expect, multiline)}")
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # e.g. a duplicate key after unquoting: not a document the parser would pass on
    loc = Locator(text)
    rows = text.splitlines(keepends=True)
    for path, token in expect.items():
        line, col = loc.value(path)
        rest = "".join(rows[line - 1:])[col - 1:]
        assert rest.startswith(token), (path, token, rest[:40])
