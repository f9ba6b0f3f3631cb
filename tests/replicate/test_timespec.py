"""Durations and points in time of the replication commands (exact, in ns)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import UsageError
from lamina.repository.timespec import iso_ns, parse_at, parse_duration

S = 10**9


@pytest.mark.parametrize(("text", "ns"), [
    ("1s", S), ("500ms", S // 2), ("90", 90 * S), ("1.5", 3 * S // 2), ("1h30m", 5400 * S),
    ("7d", 7 * 86400 * S), ("2w", 14 * 86400 * S), ("0", 0), ("250us", 250_000),
    ("1m 30s", 90 * S),
])
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "s", "-1s", "1x", "1s2", "abc", "1.s"])
def test_bad_durations_name_what(text: str) -> None:
    with pytest.raises(UsageError, match="--interval"):
        parse_duration(text, "--interval")


def test_points_in_time() -> None:
    now = 1_800_000_000 * S + 123
    assert parse_at("now", now) == now
    assert parse_at("-5m", now) == now - 300 * S
    assert parse_at("now-1h", now) == now - 3600 * S
    assert parse_at("5m ago", now) == now - 300 * S
    # A time to the second covers the whole second; to the microsecond the whole microsecond.
    assert parse_at("2027-01-15T08:00:00Z", now) == 1_800_000_000 * S + S - 1
    assert parse_at("2027-01-15T08:00:00", now) == 1_800_000_000 * S + S - 1
    assert parse_at("2027-01-15T08:00:00.000001+00:00", now) == 1_800_000_000 * S + 1999
    assert parse_at("2027-01-15T08:00", now) == 1_800_000_000 * S + 60 * S - 1
    assert parse_at("2027-01-15", now) == 1_799_971_200 * S + 86400 * S - 1
    assert parse_at("1800000000", now) == 1_800_000_000 * S + S - 1
    with pytest.raises(UsageError, match="neither ISO"):
        parse_at("yesterday-ish", now)


@given(st.integers(min_value=0, max_value=4_000_000_000 * S))
def test_a_printed_vp_time_names_that_vp(ns: int) -> None:
    """``list --points`` prints VP times to the microsecond; ``--at`` that text covers the
    VP itself and nothing of the next microsecond."""
    limit = parse_at(iso_ns(ns), 0)
    assert ns <= limit < ns - ns % 1000 + 1000


def test_nanosecond_iso_times_name_exactly_that_nanosecond() -> None:
    """A VP time copied with all 9 fractional digits names that VP, like epoch seconds."""
    now = 1_900_000_000 * S
    assert parse_at("2026-12-01T14:59:17.797520898Z", now) == 1796137157797520898
    assert parse_at("1796137157.797520898", now) == 1796137157797520898
    assert parse_at("2026-12-01T14:59:17.7975208Z", now) == 1796137157797520899
    with pytest.raises(UsageError, match="9 fractional"):
        parse_at("2026-12-01T14:59:17.7975208981Z", now)


@pytest.mark.parametrize("text", ["99999999999999999999", "-99999999d", "now-60000w"])
def test_times_out_of_range_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="out of range"):
        parse_at(text, 1_900_000_000 * S)
