"""Choosing where a backup's validity point lies: ``--vp begin`` or ``--vp end``.

MySQL 6.0 has two driver kinds. An "at begin" driver sends all of its data after the VP,
so the image is the database as of the *start* of the backup. An "at end" driver sends
the bulk before the VP (the kernel's initial transfer) and only what changed meanwhile
after it, so the image is the database as of the *end* of the backup — its VP is young
when the backup completes (``BackupResult.vp_age_ns``). Both native drivers (btree and
archive) have both kinds; the snapshot and default drivers are "at begin" only.

Concurrency: pure functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from lamina.backup import image_format
from lamina.core.driver import DriverGroup, DriverKind
from lamina.errors import UsageError
from lamina.online.plan import CHAIN_DRIVERS, NATIVE

#: The accepted values of ``vp=`` / ``--vp``.
VP_CHOICES = ("begin", "end")


def parse_vp(vp: str) -> bool:
    """True for ``"end"``, False for ``"begin"``; UsageError otherwise. Pure."""
    if vp not in VP_CHOICES:
        raise UsageError(f"--vp must be 'begin' or 'end', not {vp!r}")
    return vp == "end"


def check_at_end_choice(drivers: Mapping[str, str]) -> None:
    """UsageError unless every table's chosen driver (``{table: driver}``, as
    :func:`~lamina.online.plan.table_drivers` returns) is the native one: only native
    drivers come in an "at end" kind. Pure."""
    others = sorted(name for name, used in drivers.items() if used != NATIVE)
    if others:
        raise UsageError(f"--vp end needs native drivers; table(s) {', '.join(others)} use "
                         f"the {drivers[others[0]]} driver")


def at_end_groups(groups: Sequence[DriverGroup]) -> list[DriverGroup]:
    """``groups`` with every driver asked for its "at end" kind. Raises UsageError for a
    group of a driver that has none (snapshot, default: only native drivers do). Pure."""
    out = []
    for g in groups:
        if g.engine.name not in CHAIN_DRIVERS:
            names = ", ".join(t.name for t in g.tables)
            raise UsageError(f"--vp end needs native drivers; table(s) {names} use the "
                             f"{g.engine.name!r} driver")
        out.append(dataclasses.replace(g, flags=dataclasses.replace(g.flags, at_end=True)))
    return out


def vp_kind(catalog: image_format.ImageCatalog) -> str:
    """``"end"`` if the image's drivers are "at end" ones, else ``"begin"``. Pure."""
    ends = any(d.kind == DriverKind.AT_END for d in catalog.drivers)
    return "end" if ends else "begin"


__all__ = ["VP_CHOICES", "at_end_groups", "check_at_end_choice", "parse_vp", "vp_kind"]
