"""Named choices: lookups, listing, and errors that say what is valid."""
from __future__ import annotations

import pytest

from fkd_dali.errors import ConfigError
from fkd_dali.labels.teacher import TEACHERS
from fkd_dali.registry import Registry


def test_register_get_names():
    reg: Registry[int] = Registry("thing")
    reg.add("b", 2)

    @reg.register("a")
    def one() -> int:
        return 1

    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert reg.get("a")() == 1 and reg.get("b") == 2
    assert "a" in reg and "c" not in reg


@pytest.mark.parametrize("name, hint", [("efficientnet_lite", "Did you mean 'efficientnet_lite0'?"),
                                        ("zzz", "valid: efficientnet_lite0.")])
def test_unknown_name_lists_valid_names_and_closest(name, hint):
    with pytest.raises(ConfigError) as e:
        TEACHERS.get(name)
    assert f"unknown teacher {name!r}" in str(e.value) and hint in str(e.value)


def test_duplicate_registration_is_a_bug():
    reg: Registry[int] = Registry("thing")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("x", 2)
