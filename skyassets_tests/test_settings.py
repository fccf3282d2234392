"""Environment settings: read as given, or refused naming the variable and its value."""

import math

import pytest

from skyassets.settings import SettingError, env_number, env_switch


def test_a_number_is_read_or_refused_with_its_name(monkeypatch):
    monkeypatch.delenv("SKYASSETS_X", raising=False)
    assert env_number("SKYASSETS_X", 4) == 4  # unset: the default
    monkeypatch.setenv("SKYASSETS_X", "  ")
    assert env_number("SKYASSETS_X", 4) == 4  # empty: the default
    monkeypatch.setenv("SKYASSETS_X", " 12 ")
    assert env_number("SKYASSETS_X", 4) == 12
    monkeypatch.setenv("SKYASSETS_X", "2.5")
    assert env_number("SKYASSETS_X", 1.0, kind=float) == 2.5
    for text, said in (("2.5", "is not a whole number"), ("abc", "is not a whole number"),
                       ("0", "it must be at least 1")):
        monkeypatch.setenv("SKYASSETS_X", text)
        with pytest.raises(SettingError, match=f"^SKYASSETS_X='{text}'.*{said}"):
            env_number("SKYASSETS_X", 4, minimum=1)
    monkeypatch.setenv("SKYASSETS_X", "nan")  # not at least anything
    with pytest.raises(SettingError, match="at least 0"):
        env_number("SKYASSETS_X", math.pi, kind=float)
    assert issubclass(SettingError, ValueError)  # callers that catch ValueError still catch it


def test_a_switch_is_on_off_or_refused(monkeypatch):
    monkeypatch.delenv("SKYASSETS_Y", raising=False)
    assert env_switch("SKYASSETS_Y", True) is True and env_switch("SKYASSETS_Y", False) is False
    for text, value in (("1", True), ("Yes", True), ("on", True), ("0", False), ("FALSE", False), ("off", False)):
        monkeypatch.setenv("SKYASSETS_Y", text)
        assert env_switch("SKYASSETS_Y", not value) is value, text
    monkeypatch.setenv("SKYASSETS_Y", "maybe")
    with pytest.raises(SettingError, match="SKYASSETS_Y='maybe' is neither on"):
        env_switch("SKYASSETS_Y", True)
