"""Durations and points in time as the replication commands take them.

* A **duration** is a number with a unit, or several (``500ms``, ``1s``, ``90s``, ``1h30m``,
  ``7d``, ``2w``); a bare number is seconds.
* A **point in time** (``restore --at``) is ISO 8601 (no zone: UTC), epoch seconds, ``now``,
  or relative to now: ``-5m``, ``now-5m``, ``5m ago``.

Times are integers of nanoseconds since the epoch, computed exactly (no float rounding), so
that a VP time printed by ``list --points`` (ISO, microseconds) names that VP: a time
covers what its precision names (a date the whole day, ``HH:MM`` the minute, a fraction
down to its last digit). Pure functions, thread-safe.
"""

from __future__ import annotations

import datetime as dt
import re

from lamina.errors import UsageError

_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000,
             "w": 7 * 86_400_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_duration(text: str, what: str = "duration") -> int:
    """``text`` as nanoseconds (see the module doc); 0 is allowed. Raises UsageError
    naming ``what`` for anything else (a negative or unitless-garbage value)."""
    raw = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return _scaled(raw, _UNITS_NS["s"])
    pos, total = 0, 0
    for m in _PART.finditer(raw):
        if m.start() != pos:
            break
        total += _scaled(m.group(1), _UNITS_NS[m.group(2)])
        pos = m.end()
    if not raw or pos != len(raw):
        raise UsageError(f"{what} {text!r} is not a duration (like 500ms, 1s, 10m, 1h30m, 7d)")
    return total


def _scaled(number: str, unit_ns: int) -> int:
    whole, _, frac = number.partition(".")
    value = int(whole) * unit_ns
    if frac:
        value += int(frac) * unit_ns // 10 ** len(frac)
    return value


def iso_ns(ns: int) -> str:
    """``ns`` since the epoch as ISO 8601 UTC with microseconds."""
    return (_EPOCH + dt.timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds")


def _datetime_ns(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def parse_at(text: str, now_ns: int) -> int:
    """The point in time ``text`` names, as ns since the epoch (relative forms count back
    from ``now_ns``); an absolute time covers what its precision names (it ends at the
    last nanosecond of that day, minute, second or fraction). Raises UsageError."""
    raw = text.strip()
    low = raw.lower()
    if low == "now":
        return now_ns
    rel = None
    if low.startswith("now-"):
        rel = low[4:]
    elif low.startswith("-"):
        rel = low[1:]
    elif low.endswith(" ago"):
        rel = low[:-4]
    if rel is not None:
        return _bounded(now_ns - parse_duration(rel, "time"), text)
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        digits = len(raw.partition(".")[2])
        return _bounded(_scaled(raw, _UNITS_NS["s"]) + int(10 ** max(0, 9 - digits)) - 1, text)
    # datetime keeps microseconds: digits 7-9 of a fraction are added here, exactly.
    fraction = re.search(r"(:\d\d[.,])(\d+)", raw)
    extra_ns, iso = 0, raw
    if fraction is not None and len(fraction.group(2)) > 6:
        fraction_digits = fraction.group(2)
        if len(fraction_digits) > 9:
            raise UsageError(f"time {text!r}: more than 9 fractional digits")
        extra_ns = int(fraction_digits[6:].ljust(3, "0"))
        iso = raw[:fraction.start(2) + 6] + raw[fraction.end(2):]
    try:
        moment = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"time {text!r} is neither ISO 8601, epoch seconds, 'now' nor "
                         "relative (-5m, 5m ago)") from None
    return _bounded(_datetime_ns(moment) + extra_ns + _precision_ns(raw) - 1, text)


#: The latest time accepted: the end of year 9999 (what ISO 8601 printing can show).
_MAX_NS = _datetime_ns(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)) + 999


def _bounded(ns: int, text: str) -> int:
    """``ns`` if it is a time from 1970 to the end of 9999; else UsageError."""
    if not 0 <= ns <= _MAX_NS:
        raise UsageError(f"time {text!r} is out of range (1970-01-01 .. 9999-12-31)")
    return ns


def _precision_ns(text: str) -> int:
    """How long the instant ``text`` names lasts: a day, a minute, a second, or the last
    fractional digit given."""
    m = re.search(r"[T ]\d\d(:\d\d(:\d\d(?:[.,](\d+))?)?)?", text)
    if m is None:
        return _UNITS_NS["d"]
    if m.group(1) is None:
        return _UNITS_NS["h"]
    if m.group(2) is None:
        return _UNITS_NS["m"]
    digits = m.group(3)
    if digits is None:
        return _UNITS_NS["s"]
    return int(10 ** max(0, 9 - len(digits)))


__all__ = ["iso_ns", "parse_at", "parse_duration"]
