"""Resumable backups, the database side: a backup that pins its validity point durably,
and the resume of such a backup to the very same image.

:func:`pinned_backup` is :func:`~lamina.online.take.backup` that, the moment its VP exists
(while its drivers still hold their snapshots), records a durable pin
(:mod:`lamina.core.pins`) holding everything the image's bytes depend on: the kernel's
:class:`~lamina.backup.kernel.ResumePoint` (image id, header time, VP, each driver's pin
facts), the driver plan, codec, level and buffer size, a sealed image's key id and salt
(the pin's ``seal``; never a key), and whatever the caller adds (a repository records its
upload and base). The pin outlives the process; it is released by
the caller once the image is published (:func:`release`), by its lease's end, or on
request. :func:`resume_backup` writes that image again from the pinned snapshot.

Concurrency: as :func:`~lamina.online.take.backup`; pins are changed under the lock
file's ``pins_lock``, so backups in several processes pin and release safely.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lamina.backup import image_format
from lamina.backup.image_reader import ImageLocation
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback, ResumePoint
from lamina.core import pins
from lamina.core.catalog import ENGINE_BTREE
from lamina.core.crypto import keyring as keyrings
from lamina.core.crypto.masterkey import IMAGE_SALT_SIZE
from lamina.core.failpoints import failpoint
from lamina.database import Database
from lamina.engines.btree import format as btree_format
from lamina.errors import CorruptionError, LaminaError, NotFoundError, PinExpiredError
from lamina.online.take import ImageTarget, backup


@dataclass(frozen=True, slots=True)
class PinRequest:
    """What a pinned backup records besides the image's own facts: the pin's ``scope``
    (one pin per scope: a repository id), ``where`` (a description for messages), the
    lease in ns, and ``extra`` (JSON-ready, returned in :attr:`PinRecord.resume`)."""

    scope: str
    where: str
    lease_ns: int = pins.DEFAULT_LEASE_NS
    extra: Mapping[str, Any] = field(default_factory=dict)


#: A pin closer than this to its expiry is not renewed by a resume (counted as expired):
#: writers decide by the lease without a lock, so one ending now may already be ignored.
RENEW_MARGIN_NS = 1_000_000_000


def _btree_txnid(db: Database, point: ResumePoint) -> int:
    """The btree txnid the point's snapshot needs kept (at least 1)."""
    for name, facts in zip(point.drivers, point.driver_facts, strict=False):
        if name == ENGINE_BTREE and isinstance(facts.get("meta"), str):
            meta = btree_format.Meta.decode(bytes.fromhex(facts["meta"]), "pin facts")
            return max(1, meta.txnid)
    return max(1, db.lockfile.btree_txnid())


def pinned_backup(db: Database, target: ImageTarget, request: PinRequest, *,
                  codec: str = "zstd", level: int | None = None,
                  buf_size: int = image_format.DEFAULT_BUF_SIZE,
                  base: ImageLocation | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken = None,
                  image_id: uuid.UUID | None = None, vp: str = "begin") -> BackupResult:
    """Back up ``db`` into ``target`` (native drivers, all tables; ``vp`` as for
    :func:`~lamina.online.take.backup`) and pin the VP durably as soon as it exists (an
    "at end" backup's drivers give no pin facts: nothing is pinned), replacing any pin of
    ``request.scope``. The pin stays after any failure or kill, for :func:`resume_backup`;
    the caller releases it after publishing the image (:func:`release`). Raises what
    :func:`~lamina.online.take.backup` raises, LockedError (the pin lock), StorageError
    (writing the pin: the backup fails, nothing is pinned)."""
    def on_vp(point: ResumePoint, plan: list[Any]) -> None:
        now = time.time_ns()
        payload = {"point": point.to_json(), "plan": plan, "codec": codec, "level": level,
                   "buf_size": buf_size, **dict(request.extra)}
        record = pins.PinRecord(
            pin_id=str(point.image_id), scope=request.scope, txnid=_btree_txnid(db, point),
            vp_seq=point.vp_seq, vp_wall_ns=point.vp_wall_ns, created_ns=now,
            expires_ns=now + request.lease_ns, pid=os.getpid(), host=socket.gethostname(),
            where=request.where, resume=payload,
            seal=None if point.seal is None else pins.PinSeal.of(*point.seal))
        pins.add(db.lockfile, db.path, record)
        failpoint("backup.pinned")

    return backup(db, target, codec=codec, level=level, buf_size=buf_size, base=base,
                  progress=progress, cancel=cancel, image_id=image_id, on_vp=on_vp, vp=vp)


def find_pin(db: Database, scope: str) -> pins.PinRecord | None:
    """The pin of ``scope`` recorded in ``db`` (expired or not), or None. Raises
    CorruptionError & co. (a damaged pin file), StorageError."""
    for pin in pins.load(db.path):
        if pin.scope == scope:
            return pin
    return None


def _expired_message(pin: pins.PinRecord, hint: str) -> str:
    when = dt.datetime.fromtimestamp(pin.expires_ns / 1e9, tz=dt.UTC)
    return (f"the interrupted backup {pin.pin_id} to {pin.where} cannot be resumed: its "
            f"pin expired at {when.isoformat(timespec='seconds')} and its validity point "
            f"may be gone; {hint}")


def renew(db: Database, pin: pins.PinRecord, lease_ns: int, hint: str) -> pins.PinRecord:
    """Extend ``pin``'s lease to ``lease_ns`` from now, if it still holds, and make this
    process its owner. Raises
    PinExpiredError (expired; ``hint`` says what to do instead), NotFoundError (released
    or replaced meanwhile), LockedError, StorageError."""
    renewed: pins.PinRecord | None = None
    lapsed = False

    def change(current: list[pins.PinRecord]) -> list[pins.PinRecord]:
        nonlocal renewed, lapsed
        now = time.time_ns()
        out = []
        for p in current:  # update() has dropped expired pins already
            if p.pin_id == pin.pin_id:
                if p.expires_ns - now < RENEW_MARGIN_NS:
                    # About to lapse: a writer may be deciding by it this very moment.
                    lapsed = True
                else:  # the resuming process owns it now
                    renewed = replace(pins.extend(p, lease_ns, now), pid=os.getpid(),
                                      host=socket.gethostname())
                    p = renewed
            out.append(p)
        return out

    if pin.expired():
        raise PinExpiredError(_expired_message(pin, hint))
    pins.update(db.lockfile, db.path, change)
    if renewed is None:
        if lapsed or pin.expired():
            raise PinExpiredError(_expired_message(pin, hint))
        raise NotFoundError(f"the interrupted backup {pin.pin_id} was abandoned or replaced "
                            "meanwhile")
    return renewed


def resume_backup(db: Database, target: ImageTarget, pin: pins.PinRecord, *,
                  base: ImageLocation | None = None,
                  progress: ProgressCallback | None = None,
                  cancel: CancelToken = None) -> BackupResult:
    """Write the image of the interrupted backup ``pin`` again, byte for byte, into
    ``target``: the same drivers re-frozen at the pinned VP (``relock``), the same header,
    codec, level and buffer size. ``base`` is the same base image (a layer). The caller
    renewed the pin (:func:`renew`) so its snapshot is kept meanwhile. Raises
    CorruptionError (a malformed pin), TableNotFoundError (a table of the VP was dropped
    or re-created), UsageError (another Lamina version wrote it), and what
    :func:`~lamina.online.take.backup` raises."""
    where = f"pin {pin.pin_id}"
    data = pin.resume
    try:
        point = ResumePoint.from_json(data["point"], where)
        plan = data["plan"]
        codec, level, buf_size = data["codec"], data["level"], data["buf_size"]
        if (not isinstance(plan, list) or not isinstance(codec, str)
                or not (level is None or isinstance(level, int))
                or not isinstance(buf_size, int)):
            raise ValueError("mistyped field")
        tables = sorted(t[0] for group in plan for t in group[1])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptionError(f"pin record: {exc}", where=where) from None
    if pin.seal is not None:
        point = replace(point, seal=pin.seal.raw())
    return backup(db, target, tables=tables, codec=codec, level=level, buf_size=buf_size,
                  base=base, progress=progress, cancel=cancel, resume=point,
                  expect_plan=plan)


def reseal(db: Database, pin: pins.PinRecord, *, fresh: bool = False) -> pins.PinRecord:
    """``pin`` with the seal its resume must use, recorded durably before any part is
    sealed with it: unchanged if the current keyring (:func:`lamina.core.crypto.keyring.
    current`) seals under the key the pin names (and not ``fresh``); else a fresh random
    salt under the current key (a pin without a seal, another key, or ``fresh``: the
    stored parts were found to differ, so their salt must not seal anything again), or no
    seal for a keyring that does not seal. Raises NotFoundError (the pin was released or
    replaced meanwhile), LockedError, StorageError."""
    ring = keyrings.current()
    spec = None if ring is None else ring.seal
    if spec is None:
        wanted = None
    elif (not fresh and pin.seal is not None
          and pin.seal.key_id == spec.master.key_id.hex()):
        return pin
    else:
        wanted = pins.PinSeal.of(spec.master.key_id, secrets.token_bytes(IMAGE_SALT_SIZE))
    if wanted == pin.seal:
        return pin
    changed: pins.PinRecord | None = None

    def change(current: list[pins.PinRecord]) -> list[pins.PinRecord]:
        nonlocal changed
        out = []
        for p in current:
            if p.pin_id == pin.pin_id:
                p = changed = replace(p, seal=wanted)
            out.append(p)
        return out

    pins.update(db.lockfile, db.path, change)
    if changed is None:
        raise NotFoundError(f"the interrupted backup {pin.pin_id} was abandoned or replaced "
                            "meanwhile")
    return changed


def keep_alive(db: Database, pin_id: str, lease_ns: int) -> Callable[[], None]:
    """A callable that a running backup calls often (after each part it stores): it
    renews the pin ``pin_id`` to ``lease_ns`` from now once a quarter of the lease has
    passed, so a backup that runs longer than its lease stays resumable if it is killed
    late. Never raises (a failed renewal is retried at the next call; a pin not yet taken
    or already gone is left alone)."""
    state = {"last": time.monotonic_ns()}

    def renew_now() -> None:
        now = time.monotonic_ns()
        if now - state["last"] < lease_ns // 4:
            return
        state["last"] = now

        def change(current: list[pins.PinRecord]) -> list[pins.PinRecord]:
            return [pins.extend(p, lease_ns) if p.pin_id == pin_id else p for p in current]

        with contextlib.suppress(LaminaError):
            pins.update(db.lockfile, db.path, change, timeout=0)

    return renew_now


def release(db: Database, pin_id: str) -> bool:
    """Release the pin ``pin_id``: writers may reuse its snapshot's pages again. Returns
    True if it was held. Raises LockedError, StorageError."""
    return pins.remove(db.lockfile, db.path, pin_id)


__all__ = ["PinRequest", "find_pin", "keep_alive", "pinned_backup", "release", "renew",
           "reseal", "resume_backup"]
