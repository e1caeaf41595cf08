"""The top-level Python interface README.md documents resolves to real functions."""

from __future__ import annotations

import pytest

import scalinglab as sl


@pytest.mark.parametrize("name", sl.__all__)
def test_public_names_resolve(name: str) -> None:
    obj = getattr(sl, name)
    assert obj is not None
    assert callable(obj) or name == "plots"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sl.nope  # noqa: B018
