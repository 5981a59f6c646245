"""The profiles layer's errors: one base, ProfileError, under warden's error root.

A caller can catch a profile mistake as `warden.errors.InvalidInput` (fix what you
gave) without knowing the layer; the narrower errors a caller of bpf or constants
sees are ProfileErrors too, and stay the ValueErrors they were.
"""

from __future__ import annotations

import pickle

import pytest

from warden import errors
from warden.profiles import ProfileError, bpf, load_text
from warden.profiles.constants import ConstantError, parse_value


def test_profile_error_is_invalid_input_under_the_root() -> None:
    assert issubclass(ProfileError, errors.InvalidInput)
    assert issubclass(ProfileError, errors.WardenError)
    with pytest.raises(errors.InvalidInput, match='unknown system call "opne"'):
        load_text('[seccomp]\nallow = ["opne"]\n', file="x.toml")


@pytest.mark.parametrize("cls", [bpf.BpfError, ConstantError])
def test_the_layers_narrower_errors_have_the_layer_base(cls: type[Exception]) -> None:
    assert issubclass(cls, ProfileError) and issubclass(cls, ValueError)


def test_a_bad_filter_and_a_bad_constant_are_caught_as_invalid_input() -> None:
    with pytest.raises(errors.InvalidInput, match="multiple of 8"):
        bpf.evaluate(b"\0" * 7, 0)
    with pytest.raises(errors.InvalidInput) as info:
        parse_value("AF_INTE")
    assert info.value.message == 'unknown constant "AF_INTE" (did you mean "AF_INET"?)'


def test_a_constant_error_inside_a_profile_is_reported_once_at_its_place() -> None:
    with pytest.raises(ProfileError) as info:
        load_text('[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\n'
                  'args = ["arg0 == AF_INTE"]\n', file="x.toml")
    assert type(info.value) is ProfileError
    assert str(info.value).splitlines()[0] == (
        'x.toml:4:18: error: unknown constant "AF_INTE" (did you mean "AF_INET"?)')


def test_pickling_keeps_the_class_and_the_fields() -> None:
    with pytest.raises(ConstantError) as info:
        parse_value("NOPE_NOT_A_CONSTANT")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is ConstantError
    assert (again.token, again.message, str(again)) == (
        info.value.token, info.value.message, str(info.value))
