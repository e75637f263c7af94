"""The one env-value parser: every failure names the variable, the value and what fits."""

from __future__ import annotations

import pytest

from fleetforge.domain import envparse
from fleetforge.domain.errors import ConfigError


def test_integer_bounds_and_message() -> None:
    assert envparse.integer(" 42 ", "X", lo=0, hi=100) == 42
    with pytest.raises(ConfigError, match=r"^X: got '101', expected a whole number of ms from 0 to 100 \(default 5\)$"):
        envparse.integer("101", "X", lo=0, hi=100, unit="ms", default=5)
    with pytest.raises(ConfigError, match=r"X: got 'ten', expected a whole number >= 1"):
        envparse.integer("ten", "X", lo=1)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "abc", "-1", "2000000"])
def test_number_refuses_non_finite_and_out_of_bounds(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^Y: got '{text}', expected a finite number of USD from 0 to 1000000$"):
        envparse.number(text, "Y", lo=0, hi=1e6, unit="USD")


def test_number_accepts_a_finite_value() -> None:
    assert envparse.number("0.25", "Y", lo=0, hi=1) == 0.25


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("250ms", 0.25),
                                          ("30", 30), ("off", None), ("0", None)])
def test_durations(text: str, seconds: float | None) -> None:
    assert envparse.duration(text, "D") == seconds
    if seconds is not None:
        assert envparse.duration(envparse.format_duration(seconds), "D") == seconds


def test_duration_errors_name_the_forms() -> None:
    with pytest.raises(ConfigError, match=r"D: got '5 parsecs', expected a duration such as 90s"):
        envparse.duration("5 parsecs", "D")
    with pytest.raises(ConfigError, match=r"D: got 'off', expected a positive duration"):
        envparse.duration("off", "D", allow_off=False)


def test_booleans() -> None:
    assert [envparse.boolean(t, "B") for t in ("1", "TRUE", "yes", "on", "0", "false", "No", "off")] == [
        True, True, True, True, False, False, False, False]
    with pytest.raises(ConfigError, match=r"B: got 'maybe', expected true or false"):
        envparse.boolean("maybe", "B")


def test_byte_sizes() -> None:
    assert envparse.byte_size("512", "S") == 512
    assert envparse.byte_size("64KiB", "S") == 65536
    assert envparse.byte_size("10mb", "S") == 10 * 1024**2
    with pytest.raises(ConfigError, match=r"S: got '3 parsecs', expected a size such as 512, 64KiB"):
        envparse.byte_size("3 parsecs", "S")
    with pytest.raises(ConfigError, match=r"S: got '2GiB', expected a size from 0 to 1024 bytes"):
        envparse.byte_size("2GiB", "S", hi=1024)


def test_comma_lists() -> None:
    assert envparse.comma_list(" a, B ,,a ", "L") == ("a", "b")
    assert envparse.comma_list("Host.Example", "L", lower=False) == ("Host.Example",)
    with pytest.raises(ConfigError, match=r"L: got zipkin, expected a comma-separated subset of otlp, none"):
        envparse.comma_list("otlp,zipkin", "L", allowed=("otlp", "none"))


def test_value_is_none_when_unset_or_blank() -> None:
    env = {"A": "  ", "B": " x "}
    assert (envparse.value(env, "A"), envparse.value(env, "B"), envparse.value(env, "C")) == (None, "x", None)
