"""One environment switch, one of a few values."""

from __future__ import annotations

import pytest

from shard_worker.switches import env_choice


def test_unset_or_blank_is_the_default_and_case_does_not_matter(monkeypatch):
    monkeypatch.delenv("SPECTACLES_TEST_SWITCH", raising=False)
    assert env_choice("SPECTACLES_TEST_SWITCH", ("a", "b"), "a") == "a"
    monkeypatch.setenv("SPECTACLES_TEST_SWITCH", "  ")
    assert env_choice("SPECTACLES_TEST_SWITCH", ("a", "b"), "a") == "a"
    monkeypatch.setenv("SPECTACLES_TEST_SWITCH", " B ")
    assert env_choice("SPECTACLES_TEST_SWITCH", ("a", "b"), "a") == "b"


def test_anything_else_is_one_error_naming_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("SPECTACLES_TEST_SWITCH", "c")
    with pytest.raises(ValueError, match=r"^SPECTACLES_TEST_SWITCH must be one of a, b, not 'c'$"):
        env_choice("SPECTACLES_TEST_SWITCH", ("a", "b"), "a")
