"""Planning a layer: whether an image can be the base of an incremental backup of a
database, and the layer flags (the base image's VP facts) each driver group gets.

A layer (``online.backup(db, target, base=BASE)``) is taken by the same kernel and native
drivers as a full image; each driver gets its base image's VP facts as
``BackupFlags.base_facts`` and sends only what changed after them (docs/format.md, "Layer
streams and chains"). :func:`plan_layer` is what a backup calls; :func:`layer_base` and
:func:`layer_groups` are its two steps.

Concurrency: reads the base image and the database's shared counters only; safe beside
writers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from lamina.backup.image_reader import ImageLocation, read_info
from lamina.backup.kernel import BaseImageRef
from lamina.core.crypto import keyring
from lamina.core.driver import BackupFlags, DriverGroup, VpFacts
from lamina.database import Database
from lamina.engines.btree.facts import base_txnid_of
from lamina.errors import ChainError, UsageError
from lamina.online.facts import ImageFacts
from lamina.online.plan import CHAIN_DRIVERS


def layer_base(db: Database, base: ImageLocation,
               ) -> tuple[BaseImageRef, dict[str, VpFacts]]:
    """Check that the image at ``base`` can be the base of a layer of ``db`` and return its
    reference and its VP facts by driver name (what each driver gets as
    ``BackupFlags.base_facts``).

    The base must come from this database (same database id) and from its own history:
    its incarnation, or — for a restored database — the incarnation it was restored from,
    at or before the restore's VP (a later image of the source is another history: a layer
    on it would mix both). It must not be newer than the database's current state (VP
    commit seq and btree txnid at most the current ones) and must be chainable (native
    drivers only), and encrypted exactly when the layer will be (the current keyring seals).
    Raises NotFoundError (no base file), ChainError (another database,
    another history, a newer base, a logical base, no btree data), CorruptionError & co.
    (a damaged base, or VP facts missing from it).
    """
    info = read_info(base)
    ring = keyring.current()
    sealing = ring is not None and ring.seal is not None
    if info.header.sealed != sealing:
        state = "is" if info.header.sealed else "is not"
        raise ChainError(f"base image {info.path.name} {state} encrypted, the layer would "
                         f"{'not ' if not sealing else ''}be: encrypted and unencrypted images "
                         "never mix in one chain")
    logical = sorted({d.name for d in info.catalog.drivers} - set(CHAIN_DRIVERS))
    if logical:
        raise ChainError(f"base image {info.path.name} was taken with the "
                         f"{', '.join(logical)} driver; only native images can be the base "
                         "of a layer")
    if info.header.database_id != db.identity.db_id:
        raise ChainError(f"base image {info.path.name} is from database "
                         f"{info.header.database_id}, not from {db.path} "
                         f"({db.identity.db_id})")
    current = db.lockfile.commit_seq()
    if info.vp.commit_seq > current:
        raise ChainError(f"base image {info.path.name} is newer than the database: its VP is "
                         f"commit seq {info.vp.commit_seq}, the database is at {current}")
    if not db.identity.shares_history_with(info.header.incarnation, info.vp.commit_seq):
        raise ChainError(f"base image {info.path.name} is from another history of this "
                         f"database (incarnation {info.header.incarnation}); {db.path} "
                         f"was restored at commit seq {db.identity.restored_vp_seq} and "
                         "has written its own history since")
    facts = ImageFacts(info, f"base image {info.path.name}")
    base_txnid = base_txnid_of(facts.btree())
    txnid = db.store.current_meta().txnid
    if base_txnid > txnid:
        raise ChainError(f"base image {info.path.name} is newer than the database: its btree "
                         f"txnid is {base_txnid}, the database's {txnid}")
    return BaseImageRef(info.header.image_id, info.vp.commit_seq), facts.by_driver()


def layer_groups(groups: Sequence[DriverGroup], ref: BaseImageRef,
                 facts: Mapping[str, VpFacts]) -> list[DriverGroup]:
    """``groups`` with layer flags: each driver gets the base image's VP facts of the same
    driver (None when the base has no data of that driver: then it sends everything
    whole). Raises UsageError for a driver that cannot write layers (only the native ones
    can). Pure."""
    out = []
    for g in groups:
        if g.engine.name not in CHAIN_DRIVERS:
            names = ", ".join(t.name for t in g.tables)
            raise UsageError(f"a layer needs native drivers; table(s) {names} use the "
                             f"{g.engine.name!r} driver")
        out.append(dataclasses.replace(g, flags=BackupFlags(
            layer=True, base_facts=facts.get(g.engine.name), base_vp_seq=ref.vp_seq)))
    return out


def plan_layer(db: Database, groups: Sequence[DriverGroup], base: ImageLocation,
               ) -> tuple[list[DriverGroup], BaseImageRef]:
    """The driver groups of a layer of ``db`` on the image at ``base`` (``groups`` as
    :func:`~lamina.online.plan.plan_groups` planned them for a full image) and the base's
    reference for the kernel: :func:`layer_base`, then :func:`layer_groups`. Raises as
    they do."""
    ref, facts = layer_base(db, base)
    return layer_groups(groups, ref, facts), ref


__all__ = ["layer_base", "layer_groups", "plan_layer"]
