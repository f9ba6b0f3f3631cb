"""Online backup and restore of a whole :class:`~lamina.database.Database`: the glue
between a database and the backup kernel (:mod:`lamina.backup`).

It sits above the database and the engines (it builds their native backup engines and
logical sources) and below the repository and the CLI. This module is a facade: callers
write ``from lamina import online; online.backup(db, "img")``. The modules:

* :mod:`~lamina.online.plan` — driver choice (native, snapshot, default) and engine wiring;
* :mod:`~lamina.online.layers` — planning a layer: its base image, each driver's base facts;
* :mod:`~lamina.online.take` — taking a backup of a database (and its history record);
* :mod:`~lamina.online.restoring` — restoring an image into a new directory, and proving a
  restored directory before it is published;
* :mod:`~lamina.online.verifying` — verifying an image without restoring it;
* :mod:`~lamina.online.chain` — chains of a full image and its layers: order, restore,
  verify, combine;
* :mod:`~lamina.online.segment` — merging a segment of a chain into one layer on its base;
* :mod:`~lamina.online.facts` — the typed VP facts of an image's drivers;
* :mod:`~lamina.online.sink` — the logical restore sink (tables rebuilt through engines).

Concurrency: a backup runs beside any number of writers in any process; they are held
back only while the validity point is created (``BackupResult.blocker_held_ns``).
"""

from __future__ import annotations

from lamina.backup.history import BackupHistory
from lamina.online.chain import combine_chain, order_chain, restore_chain, verify_chain
from lamina.online.layers import layer_base, layer_groups
from lamina.online.plan import (
    DEFAULT,
    DRIVERS,
    ENGINE_DRIVERS,
    NATIVE,
    SNAPSHOT,
    DriverChoice,
    backup_engines,
    choose_drivers,
    logical_providers,
    parse_driver_choice,
    plan_groups,
    restore_engines,
)
from lamina.online.restoring import RestoreSummary, restore
from lamina.online.segment import combine_segment, prove_layer
from lamina.online.take import ImageTarget, backup, describe
from lamina.online.verifying import verify

__all__ = [
    "DEFAULT",
    "DRIVERS",
    "ENGINE_DRIVERS",
    "NATIVE",
    "SNAPSHOT",
    "BackupHistory",
    "DriverChoice",
    "ImageTarget",
    "RestoreSummary",
    "backup",
    "backup_engines",
    "choose_drivers",
    "combine_chain",
    "combine_segment",
    "describe",
    "layer_base",
    "layer_groups",
    "logical_providers",
    "order_chain",
    "parse_driver_choice",
    "plan_groups",
    "prove_layer",
    "restore",
    "restore_chain",
    "restore_engines",
    "verify",
    "verify_chain",
]
