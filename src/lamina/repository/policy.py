"""Keep policies for ``prune``, in the style of restic's ``forget``, on validity-point time.

Each database (by database id) is considered on its own. Its backups are ordered newest
first by validity point (wall clock, then commit seq), and a backup is kept when any rule
selects it:

* ``last N``: the N newest backups;
* ``daily N``: the newest backup of each of the N most recent UTC days that have backups;
* ``weekly N``: the newest backup of each of the N most recent ISO weeks (UTC) that have
  backups.

Selection depends only on the backups that are kept and the ones newer than them, so
deleting unkept backups never changes it: a prune that is run again (after a crash, say)
keeps exactly the same backups. Pure functions: no I/O, no locks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from lamina.errors import UsageError
from lamina.repository.index import ImageRecord


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """How many backups each rule keeps (0: the rule is off)."""

    last: int = 0
    daily: int = 0
    weekly: int = 0

    def __post_init__(self) -> None:
        if min(self.last, self.daily, self.weekly) < 0:
            raise UsageError("keep counts must be 0 or more")
        if not (self.last or self.daily or self.weekly):
            # A policy keeping nothing would delete every backup: surely a mistake.
            raise UsageError("a keep policy must keep something (--keep-last N, ...)")

    def describe(self) -> str:
        """``last 3, daily 7``: the rules that are on."""
        parts = [f"{name} {n}" for name, n in (("last", self.last), ("daily", self.daily),
                                                ("weekly", self.weekly)) if n]
        return ", ".join(parts)


def _day(ns: int) -> Hashable:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).date()


def _week(ns: int) -> Hashable:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isocalendar()[:2]


def _newest_per_bucket(newest_first: list[ImageRecord], count: int,
                       bucket: Callable[[int], Hashable]) -> list[ImageRecord]:
    picked: list[ImageRecord] = []
    seen: set[Hashable] = set()
    for r in newest_first:
        if len(picked) >= count:
            break
        b = bucket(r.vp_wall_ns)
        if b not in seen:
            seen.add(b)
            picked.append(r)
    return picked


def select(records: Iterable[ImageRecord], policy: KeepPolicy) -> dict[uuid.UUID, list[str]]:
    """The backups ``policy`` keeps, by backup id, each with the rules that keep it.

    Unreadable images (``error`` set) carry no time, so no rule can judge them: they are
    always kept (``unreadable``), and prune never deletes them.
    """
    kept: dict[uuid.UUID, list[str]] = {}
    groups: dict[uuid.UUID, list[ImageRecord]] = {}
    for r in records:
        if r.error is not None:
            kept[r.backup_id] = ["unreadable"]
        else:
            groups.setdefault(r.database_id, []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: (r.vp_wall_ns, r.vp_seq, str(r.backup_id)), reverse=True)
        rules = [("last", group[:policy.last]),
                 ("daily", _newest_per_bucket(group, policy.daily, _day)),
                 ("weekly", _newest_per_bucket(group, policy.weekly, _week))]
        for name, picked in rules:
            for r in picked:
                kept.setdefault(r.backup_id, []).append(name)
    return kept
