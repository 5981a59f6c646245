"""The parsed-profile cache: a hit is the profile parsing would give, and nothing changed
on disk, nothing planted in the cache, can make it give another.

Each change below is one a user (or a sandbox with a writable bind) could make
between two runs: a file of the extends/include chain edited, a profile of the
same name created earlier in the search path, a link retargeted, an entry
forged or rewritten to name a class outside the model. Each must make the next
lookup parse afresh. The controls prove the tests can fail: untouched, the
second lookup is a hit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import pytest

from warden.profiles import cache, load_profile, model
from warden.profiles.cache import CacheWarning, ProfileLookup, encode_model, loads_model


@pytest.fixture()
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.delenv(cache.DISABLE_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache" / "warden", tmp_path / "state" / "warden" / cache.KEY_NAME


def look(name: str, dirs: tuple[Path, Path], keep: bool = True) -> ProfileLookup:
    lookup = ProfileLookup(name, directory=dirs[0], key_file=dirs[1])
    if keep:
        lookup.keep([])
    return lookup


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CHILD = 'extends = "default"\ninclude = ["more.toml"]\ndescription = "child"\n'
MORE = '[namespaces]\nnet = false\n'


def test_a_second_lookup_is_a_hit_equal_to_parsing(dirs: tuple[Path, Path]) -> None:
    for name in ("default", "strict", "python-worker"):
        first = look(name, dirs)
        assert not first.hit
        second = look(name, dirs)
        assert second.hit  # the control: nothing changed, so the cache answered
        assert second.profile == first.profile == load_profile(name)
        assert repr(second.profile) == repr(load_profile(name))
        assert hash(second.profile.seccomp.rules) == hash(load_profile(name).seccomp.rules)


def test_editing_any_file_of_the_chain_parses_afresh(tmp_path: Path,
                                                     dirs: tuple[Path, Path]) -> None:
    child = write(tmp_path / "p" / "child.toml", CHILD)
    more = write(tmp_path / "p" / "more.toml", MORE)
    assert not look(str(child), dirs).hit
    assert look(str(child), dirs).hit
    assert not look(str(child), dirs).profile.namespaces.net
    more.write_text("[namespaces]\nnet = true\n")  # same size, same second: content counts
    again = look(str(child), dirs)
    assert not again.hit and again.profile.namespaces.net
    assert look(str(child), dirs).hit
    child.write_text(CHILD.replace("child", "edited"))
    again = look(str(child), dirs)
    assert not again.hit and again.profile.description == "edited"


def test_a_profile_created_earlier_in_the_search_path_wins(
        tmp_path: Path, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    write(second / "mine.toml", 'description = "second"\n')
    monkeypatch.setenv("WARDEN_PROFILE_PATH", f"{first}:{second}")
    assert look("mine", dirs).profile.description == "second"
    assert look("mine", dirs).hit
    write(first / "mine.toml", 'description = "first"\n')
    got = look("mine", dirs)
    assert not got.hit and got.profile.description == "first"
    # And a file carrying a built-in's name, created later, is refused as parsing refuses it.
    assert look("default", dirs).hit is False
    write(first / "default.toml", 'description = "not the built-in"\n')
    with pytest.raises(Exception, match="name of the built-in profile"):
        look("default", dirs)


def test_a_retargeted_link_parses_afresh(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    a = write(tmp_path / "a.toml", 'description = "a"\n')
    b = write(tmp_path / "b.toml", 'description = "b"\n')
    link = tmp_path / "link.toml"
    link.symlink_to(a)
    assert look(str(link), dirs).profile.description == "a"
    assert look(str(link), dirs).hit
    link.unlink()
    link.symlink_to(b)
    got = look(str(link), dirs)
    assert not got.hit and got.profile.description == "b"


def test_the_search_path_and_working_directory_are_part_of_the_key(
        tmp_path: Path, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    look("default", dirs)
    assert look("default", dirs).hit
    monkeypatch.setenv("WARDEN_PROFILE_PATH", str(tmp_path))
    assert not look("default", dirs).hit
    monkeypatch.delenv("WARDEN_PROFILE_PATH")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # profile sources are shown relative to it
    assert not look("default", dirs).hit


def _entry(dirs: tuple[Path, Path], name: str) -> Path:
    key = cache.profile_key(name)
    assert key is not None
    return dirs[0] / key


def test_a_forged_entry_is_refused_loudly(dirs: tuple[Path, Path]) -> None:
    look("default", dirs)
    entry = _entry(dirs, "default")
    data = entry.read_bytes()
    forged = data.replace(b'"net":true', b'"net":false')
    assert forged != data
    entry.write_bytes(forged)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = look("default", dirs)
    assert not got.hit and got.profile == load_profile("default")
    assert any(issubclass(w.category, CacheWarning) and "failed authentication" in
               str(w.message) for w in seen)


def _plant(dirs: tuple[Path, Path], name: str, body: object) -> None:
    """An entry MACed with the real key (what only warden itself could write)."""
    key = cache.profile_key(name)
    assert key is not None
    cache.store(dirs[0], key, json.dumps(body).encode(), dirs[1].read_bytes(), kind="profile")


def test_only_the_models_classes_are_built(dirs: tuple[Path, Path]) -> None:
    """Even under the real key (the decoder is the second line), a class outside the
    model, an unknown field or a filter entry passed off as a profile is refused."""
    look("default", dirs)
    good = json.loads(_entry(dirs, "default").read_bytes().partition(b"\n\n")[2])
    _plant(dirs, "default", good)
    assert look("default", dirs, keep=False).hit  # the control: a planted good entry is used
    for bad in ({**good, "profile": {"$": "Popen", "args": ["/bin/sh"]}},
                {**good, "profile": {**good["profile"], "shell": "yes"}},
                {**good, "profile": {"$enum": "Outcome", "value": "ok"}},
                {**good, "extra": 1}):
        _plant(dirs, "default", bad)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = look("default", dirs, keep=False)
        assert not got.hit, bad
        assert any("cannot be read" in str(w.message) for w in seen), bad
    key = cache.profile_key("default")
    assert key is not None
    cache.store(dirs[0], key, json.dumps(good).encode(), dirs[1].read_bytes())  # a filter's MAC
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert not look("default", dirs, keep=False).hit


def test_not_kept_when_the_sandbox_reaches_the_key_or_writes_the_cache(
        dirs: tuple[Path, Path]) -> None:
    where, keyf = dirs
    for reach in ([(str(where), True)], [(str(where.parent.parent), True)],
                  [(str(keyf.parent), False)]):
        lookup = ProfileLookup("strict", directory=where, key_file=keyf)
        lookup.keep(reach)
        assert not ProfileLookup("strict", directory=where, key_file=keyf).hit, reach
    lookup = ProfileLookup("strict", directory=where, key_file=keyf)
    lookup.keep([(str(where), False)])  # reading the cache is harmless: kept
    assert ProfileLookup("strict", directory=where, key_file=keyf).hit


def test_off_with_the_cache(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.DISABLE_VAR, "1")
    look("default", dirs)
    assert not look("default", dirs).hit
    assert not dirs[0].exists()


def test_the_codec_follows_the_models_fields() -> None:
    """Derived from the dataclass fields: every model class round-trips, and a field
    added to the model later needs no change to the cache."""
    prof = load_profile("default")
    assert loads_model(json.dumps(encode_model(prof)).encode()) == prof
    # A model with one more field (as a later version adds one, with a default).
    Limits2 = dataclasses.make_dataclass(
        "Limits", [("stack_bytes", "int | None", dataclasses.field(default=None))],
        bases=(model.Limits,), frozen=True)
    Profile2 = dataclasses.make_dataclass(
        "Profile", [("labels", "tuple[str, ...]", dataclasses.field(default=()))],
        bases=(model.Profile,), frozen=True)
    classes = {**{n: c for n, c in vars(model).items() if isinstance(c, type)},
               "Limits": Limits2, "Profile": Profile2}
    newer = Profile2(name="x", source="<test>", limits=Limits2(memory_bytes=5, stack_bytes=7),
                     labels=("a", "b"))
    back = loads_model(json.dumps(encode_model(newer)).encode(), classes)
    assert back == newer and type(back) is Profile2
    assert back.limits.stack_bytes == 7 and back.labels == ("a", "b")  # type: ignore[attr-defined]
    # An entry written before the field existed decodes with its default.
    plain = Profile2(name="x", source="<test>", limits=Limits2())
    older = encode_model(plain)
    assert isinstance(older, dict)
    del older["labels"]
    assert loads_model(json.dumps(older).encode(), classes) == plain


def test_warden_run_parses_once_and_then_never_loads_the_parser(
        tmp_path: Path) -> None:
    import subprocess

    from tests.interpreter import PYTHON

    probe = ("import os, sys\n"
             "real = os._exit\n"
             "def leave(code):\n"
             "    loaded = [m for m in ('tomllib', 'warden.profiles.parser',\n"
             "              'warden.profiles.loader', 'click') if m in sys.modules]\n"
             "    sys.stderr.write(repr(loaded))\n"
             "    sys.stderr.flush()\n"
             "    real(code)\n"
             "os._exit = leave\n"
             "sys.argv = ['warden', 'run', '-q', '--', '/bin/true']\n"
             "from warden.supervisor.cli import entry\n"
             "entry()\n")
    env = {k: v for k, v in os.environ.items() if k != cache.DISABLE_VAR}
    env.update(XDG_CACHE_HOME=str(tmp_path / "c"), XDG_STATE_HOME=str(tmp_path / "s"))
    runs = [subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs
    assert "warden.profiles.parser" in runs[0].stderr
    assert runs[1].stderr == "[]"


def test_no_key_is_made_before_the_sandboxs_reach_is_known(dirs: tuple[Path, Path]) -> None:
    """The lookup only uses a key that exists; keep() makes one, and not for a sandbox
    that would see it (as the filter cache decides)."""
    where, keyf = dirs
    lookup = ProfileLookup("default", directory=where, key_file=keyf)
    assert not keyf.exists() and not keyf.parent.exists()
    lookup.keep([(str(keyf.parent), False)])
    assert not keyf.exists()
    lookup = ProfileLookup("default", directory=where, key_file=keyf)
    lookup.keep([])
    assert keyf.exists() and ProfileLookup("default", directory=where, key_file=keyf).hit
