"""The backup driver API (MySQL 6.0 online backup, in Python): what every engine implements.

The backup kernel (:mod:`lamina.backup.kernel`) never knows how an engine stores data. For
each group of tables it asks a :class:`BackupEngine` for a :class:`BackupDriver`, and for
a restore it asks for a :class:`RestoreDriver`. Engines implement these classes by
importing this module only; they never import the kernel.

A driver answers every call with a :class:`Result`. Which results each call may return is
part of its contract below; anything else is a driver bug, reported by the kernel as
:class:`DriverProtocolError`. A call may also *raise*: a :class:`~lamina.errors.LaminaError`
is passed on to the caller after clean-up, as is any other exception (a bug).

Streams. A driver writes its bytes into numbered *local* streams: local stream 0 is the
driver's common stream, local stream N (1-based) is the N-th table of the ``tables`` list
it was created with. The kernel maps local streams to the image's global stream numbers
(recorded in the image catalog), so drivers never see other drivers' streams.

Backup protocol, in the order the kernel calls (docs/format.md describes the image)::

    get_backup(tables, flags)              every driver group; no resources held yet
    begin(buf_size)                        every driver
    get_data(buf) ... until READY          "at end" drivers only: initial transfer
    prelock() ... until READY              every driver; OK/BUSY = "not yet", polled again
    -- commit blocker taken --
    lock()                                 every driver: freeze the VP; no I/O, O(1)/table
    (kernel reads the commit seq)
    unlock()                               every driver; no I/O
    -- commit blocker released --
    get_data(buf) ... until DONE           every driver, round-robin: final transfer
    vp_info()                              every driver, once, after DONE
    end()                                  every driver
    on any failure or cancellation: cancel() on every driver whose begin() was called

Restore protocol::

    get_restore(version, tables, flags)    per driver recorded in the image catalog
    begin()                                every driver
    send_data(buf) ...                     each chunk, in image order (per stream: in order)
    set_vp_info(facts)                     once the whole image verified (manifest, hashes)
    end()                                  every driver: make the restored tables durable
    on any failure or cancellation: cancel() on every driver whose begin() was called

Concurrency: the kernel calls one driver from one thread, one call at a time. A driver may
run threads of its own (e.g. a default driver waiting for table locks), but every call must
return promptly: "not yet" is said with OK/PROCESSING/BUSY, never by blocking.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from lamina.errors import CorruptionError, DriverChoiceError, LaminaError, UnsupportedError


class Result(enum.Enum):
    """What a driver call reports (MySQL's ``result_t``)."""

    #: The call did what was asked (a buffer was filled; an action completed).
    OK = "ok"
    #: ``get_data`` of an "at end" driver: initial transfer done, ready for the VP.
    #: ``prelock``: prepared (e.g. table locks held); ``lock()`` may be called.
    READY = "ready"
    #: Work is under way but nothing was produced by this call: call again.
    PROCESSING = "processing"
    #: The driver cannot make progress now: the kernel turns to other drivers and retries
    #: later (backing off briefly when every driver is busy).
    BUSY = "busy"
    #: ``get_data`` after the VP: every stream of this driver is complete.
    DONE = "done"
    #: The call failed; the driver should set ``error`` to say why.
    ERROR = "error"


class DriverKind(enum.IntEnum):
    """When a backup driver sends its data relative to the validity point (VP)."""

    #: All data is sent after the VP (the archive native driver: frozen positions).
    AT_BEGIN = 0
    #: Most data is sent before the VP (initial transfer), the rest after it.
    AT_END = 1

    @property
    def label(self) -> str:
        """The MySQL name: ``"at begin"`` or ``"at end"``."""
        return "at begin" if self is DriverKind.AT_BEGIN else "at end"


class DriverProtocolError(RuntimeError):
    """A driver broke the documented contract (a result not allowed for the call, a stream
    number it does not own, more bytes than the buffer holds, data after ``last`` ...).

    This is a bug in the driver, not a data or usage problem, so it is deliberately *not*
    a :class:`~lamina.errors.LaminaError` (the CLI reports it as an internal error).
    """


@dataclass(slots=True)
class Buffer:
    """One block of one stream, passed between kernel and driver.

    Backup: the kernel hands ``get_data`` an empty buffer; the driver sets ``stream``
    (its local stream number: 0 = common, N = N-th table), ``data`` (at most ``capacity``
    bytes) and ``last`` (True on the final block of that stream; after it, the stream gets
    no more data). A buffer left empty and not ``last`` is ignored.

    Restore: the kernel fills all fields (``capacity == len(data)``) and passes it to
    ``send_data``; the driver must not keep a reference to ``data`` past the call unless it
    copies it.
    """

    capacity: int
    stream: int = 0
    data: bytes | bytearray | memoryview = b""
    last: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table as the kernel names it to a driver: name, storage engine, table id."""

    name: str
    engine: str
    table_id: int


def require_engine(tables: Sequence[TableSpec], engine: str) -> None:
    """Raise DriverChoiceError unless every table in ``tables`` is of ``engine``: a driver
    must never be handed another engine's table."""
    for t in tables:
        if t.engine != engine:
            raise DriverChoiceError(f"table {t.name!r} is a {t.engine} table, not {engine}")


class FactReader:
    """Reads the typed fields of one VP-facts record from its JSON form.

    Every accessor raises :class:`~lamina.errors.CorruptionError` naming ``where`` and the
    key when a fact is missing or of the wrong type: a missing fact is an error, never
    silently skipped. Booleans are not accepted where integers are expected.
    """

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise CorruptionError(f"{where}: VP facts are not an object")
        self.data: Mapping[str, Any] = data
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise CorruptionError(f"{self.where}: VP fact {key!r} is missing")
        return self.data[key]

    def has(self, key: str) -> bool:
        """True if ``key`` is present (for facts that are optional by definition)."""
        return key in self.data

    def integer(self, key: str, *, minimum: int = 0) -> int:
        """The integer fact ``key`` (>= ``minimum``)."""
        value = self._get(key)
        if type(value) is not int or value < minimum:
            raise CorruptionError(f"{self.where}: VP fact {key!r} is not an integer "
                                  f">= {minimum}")
        return value

    def text(self, key: str) -> str:
        """The string fact ``key``."""
        value = self._get(key)
        if not isinstance(value, str):
            raise CorruptionError(f"{self.where}: VP fact {key!r} is not a string")
        return value

    def digest(self, key: str, size: int) -> bytes:
        """The fact ``key``: ``size`` bytes written as lowercase hexadecimal."""
        text = self.text(key)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) != size or value.hex() != text:
            raise CorruptionError(f"{self.where}: VP fact {key!r} is not {size} bytes of hex")
        return value

    def mapping(self, key: str) -> FactReader:
        """The object fact ``key``, as a reader of its own."""
        return FactReader(self._get(key), f"{self.where}.{key}")

    def entries(self) -> list[tuple[str, FactReader]]:
        """(key, reader) for every entry of this object, each of which must be an object."""
        return [(k, FactReader(v, f"{self.where}.{k}")) for k, v in self.data.items()]


class VpFacts(abc.ABC):
    """What a backup driver knows about the validity point it froze (a typed record).

    Each engine's drivers define their own record (btree: txnid, root hash, page counts;
    archive: per-table rows, positions, generations). ``to_json()`` is stored in the image
    manifest; ``from_json()`` reads it back for a restore driver (to prove what it rebuilt)
    and for a layer's backup driver (its base image's facts), and raises CorruptionError if
    any fact is missing or mistyped.
    """

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The JSON form (str keys; str/int/bool/list/dict values)."""

    @classmethod
    @abc.abstractmethod
    def from_json(cls, data: object, where: str) -> Self:
        """Decode the JSON form; CorruptionError (naming ``where``) if a fact is missing."""


@dataclass(frozen=True, slots=True)
class NoFacts(VpFacts):
    """The facts of a driver that records none."""

    def to_json(self) -> dict[str, Any]:
        """An empty object."""
        return {}

    @classmethod
    def from_json(cls, data: object, where: str) -> NoFacts:
        """Accepts any object (there is nothing to miss)."""
        FactReader(data, where)
        return cls()


@dataclass(frozen=True, slots=True)
class BackupFlags:
    """Options for :meth:`BackupEngine.get_backup` (MySQL passes a flag word; this is typed).

    ``layer`` asks for an incremental image: only what changed after the base image's VP.
    ``base_facts`` is what this driver reported from ``vp_info()`` in the base image,
    decoded by :meth:`BackupEngine.decode_vp_facts` (for example the btree txnid at the base
    VP), or None when the base image has no data of this driver; ``base_vp_seq`` is the
    base image's commit seq. ``at_end`` asks for an "at end" driver (most data sent in the
    initial transfer, before the VP); an engine without one raises DriverChoiceError.
    """

    layer: bool = False
    base_facts: VpFacts | None = None
    base_vp_seq: int = 0
    at_end: bool = False


@dataclass(frozen=True, slots=True)
class RestoreFlags:
    """Options for :meth:`BackupEngine.get_restore`.

    ``destination`` is the (temporary, not yet published) database directory to restore
    into, or None for a *verify-only* restore (``lamina verify --deep``): the driver must
    decode and prove everything it is sent (page hashes and the Merkle root, block
    checksums and row counts) exactly as a restore would, but write nothing. ``layer`` is
    True when the image is an incremental layer to apply on top of what ``destination``
    already holds. ``kind`` is the kind of the backup driver that wrote the streams (from
    the image catalog): an "at end" driver's streams are laid out differently.
    """

    destination: Path | None
    layer: bool = False
    kind: DriverKind = DriverKind.AT_BEGIN


class BackupDriver(abc.ABC):
    """Sends the data of a set of tables, consistent as of the validity point.

    Created by :meth:`BackupEngine.get_backup`; used by one kernel, from one thread.
    Subclasses set ``kind`` (class or instance attribute) and, when a call returns
    :attr:`Result.ERROR`, ``error`` to the reason (the kernel raises it).
    """

    kind: DriverKind = DriverKind.AT_BEGIN
    #: Why the last call returned ERROR; the kernel raises it after clean-up.
    error: LaminaError | None = None

    @abc.abstractmethod
    def begin(self, buf_size: int) -> Result:
        """Start the backup; ``buf_size`` is the most bytes any ``get_data`` may return.

        Called once, first. Acquire resources here (not in ``get_backup``): from now on
        ``cancel()`` will be called if anything fails. Returns OK or ERROR.
        """

    @abc.abstractmethod
    def get_data(self, buffer: Buffer) -> Result:
        """Fill ``buffer`` with the next block of some local stream.

        Before the VP ("at end" drivers only, initial transfer): returns OK (buffer
        filled), PROCESSING (nothing this time, call again), BUSY (try later), READY
        (initial transfer complete, ready for the VP; the buffer may carry a last block of
        data), or ERROR. After the VP (every driver): OK, PROCESSING, BUSY, DONE (this was
        the final call; the buffer may carry a last block) or ERROR. Data sent after the VP
        must reflect exactly the state frozen by ``lock()``.
        """

    @abc.abstractmethod
    def prelock(self) -> Result:
        """Prepare for the VP (e.g. a blocking driver starts taking its table locks).

        Polled until it returns READY; OK or BUSY mean "not yet" (polled again after the
        other drivers, with a short back-off). ERROR fails the backup. Must not block.
        """

    @abc.abstractmethod
    def lock(self) -> Result:
        """Freeze the VP of every table of this driver. Returns OK or ERROR.

        Called with the database's commit blocker held exclusively, so no commit of any
        engine is published meanwhile. It must return at once: **no disk I/O, no waiting,
        O(1) per table** (read published positions/txnids from memory, set a flag).
        """

    def pin_facts(self) -> dict[str, Any] | None:
        """After ``lock()``: JSON-ready facts from which :meth:`relock` in another process
        freezes this very VP again (a btree meta record, an archive commit seq), for a
        backup that is resumed after it was interrupted; None (the default) when this
        driver cannot do that (its VP is not durable: table locks, an MVCC reader). Memory
        only. The caller keeps what the facts name from being overwritten (a durable pin).
        """
        return None

    def relock(self, facts: Mapping[str, Any]) -> Result:
        """In a resumed backup, instead of ``lock()``: freeze the VP that ``facts`` (from
        :meth:`pin_facts` of the interrupted backup's driver) describe, so that everything
        this driver sends is byte for byte what the interrupted one would have sent.
        Called without the commit blocker; memory only. Returns OK or ERROR (``error``:
        UnsupportedError by default, CorruptionError for facts that do not decode)."""
        self.error = UnsupportedError(f"the {type(self).__name__} cannot resume a backup")
        return Result.ERROR

    @abc.abstractmethod
    def unlock(self) -> Result:
        """Called right after every driver's ``lock()`` and the VP were recorded, still under
        the commit blocker. Same rules as ``lock()``: no I/O, returns OK or ERROR at once.
        """

    @abc.abstractmethod
    def cancel(self) -> Result:
        """Abandon the backup and release everything (snapshots, table locks, threads).

        Called instead of any further call after a failure or cancellation, on every driver
        whose ``begin()`` was called (even the one that failed), at most once, in any
        state. Must not raise; returns OK or ERROR (ERROR is logged, nothing more).
        """

    @abc.abstractmethod
    def end(self) -> Result:
        """Finish a successful backup after DONE and ``vp_info()``; release resources.

        Returns OK or ERROR (ERROR fails the backup: no image is published).
        """

    @abc.abstractmethod
    def init_size(self) -> int | None:
        """Bytes expected before the VP ("at end" initial transfer); 0 for "at begin"
        drivers; None if unknown. O(1), no I/O: used for progress only."""

    @abc.abstractmethod
    def size(self) -> int | None:
        """Bytes expected in total (an estimate, may change); None if unknown. O(1)."""

    def vp_info(self) -> VpFacts:
        """Facts about the VP this driver froze, stored in the image manifest (as
        ``to_json()``).

        Called once, after ``get_data`` returned DONE and before ``end()``. A btree driver
        reports its txnid and root hash, an archive driver each table's rows and position.
        A later layer's driver gets these back, decoded by its engine's
        :meth:`BackupEngine.decode_vp_facts`, as ``BackupFlags.base_facts``; the restore
        driver gets them through :meth:`RestoreDriver.set_vp_info`.
        """
        return NoFacts()


class ReleasingDriver(BackupDriver):
    """Base of backup drivers that hold resources (slots, locks, files) until the end.

    Subclasses implement :meth:`_release` (idempotent: give back everything held) and set
    ``label`` for messages; this class supplies an ``end()`` that releases, and a
    ``cancel()`` that releases from any state and never raises (a failure to release
    becomes ``error`` and ERROR).
    """

    #: Names the driver in messages ("btree", "archive", "snapshot", ...).
    label: str = "backup"

    @abc.abstractmethod
    def _release(self) -> None:
        """Give back everything the driver holds; safe to call more than once."""

    def end(self) -> Result:
        """Release everything. OK."""
        self._release()
        return Result.OK

    def cancel(self) -> Result:
        """Release everything from any state; never raises (ERROR if releasing failed)."""
        try:
            self._release()
        except Exception as exc:  # cancel must not raise: the kernel is cleaning up
            self.error = LaminaError(f"{self.label} backup driver could not release: {exc}")
            return Result.ERROR
        return Result.OK


class AtBeginDriver(ReleasingDriver):
    """Base of "at begin" drivers that hold resources (slots, locks, files) until the end.

    As :class:`ReleasingDriver` (subclasses implement :meth:`_release` and set ``label``),
    plus ``init_size() == 0``: nothing is sent before the VP.
    """

    kind = DriverKind.AT_BEGIN

    def init_size(self) -> int:
        """0: an "at begin" driver sends nothing before the VP."""
        return 0


class RestoreDriver(abc.ABC):
    """Receives a driver's streams from an image and rebuilds its tables.

    Created by :meth:`BackupEngine.get_restore`; used by one kernel, from one thread.
    Local stream numbers are as in the backup: 0 common, N = N-th table of ``tables``.
    """

    #: Why the last call returned ERROR; the kernel raises it after clean-up.
    error: LaminaError | None = None
    #: The VP facts of the backup driver, set by :meth:`set_vp_info` before ``end()``.
    vp_facts: VpFacts | None = None

    @abc.abstractmethod
    def begin(self) -> Result:
        """Start restoring (create files in ``RestoreFlags.destination``). OK or ERROR."""

    @abc.abstractmethod
    def send_data(self, buffer: Buffer) -> Result:
        """Consume one block. Blocks of a stream arrive in order; ``last`` marks the end.

        Returns OK or PROCESSING (accepted), BUSY (not accepted: the kernel sends the same
        buffer again later) or ERROR. Every chunk was checksummed before it is sent; the
        image as a whole is only proven (stream hashes, manifest) before ``end()``.
        """

    def set_vp_info(self, facts: VpFacts) -> None:
        """Receive the backup driver's ``vp_info()`` facts (decoded by the engine's
        :meth:`BackupEngine.decode_vp_facts`) once the image is verified, before ``end()``,
        so ``end()`` can check what it restored (e.g. a root hash)."""
        self.vp_facts = facts

    @abc.abstractmethod
    def end(self) -> Result:
        """Finish: make the restored tables complete and durable; check them against the
        VP facts. Returns OK or ERROR (or raises e.g. CorruptionError)."""

    @abc.abstractmethod
    def cancel(self) -> Result:
        """Abandon the restore, removing what was written. Same rules as
        :meth:`BackupDriver.cancel`: any state, at most once, never raises."""


class BackupEngine(abc.ABC):
    """A source of backup and restore drivers: one per storage engine (native drivers), plus
    the generic consistent-snapshot and default drivers.

    ``name`` identifies the driver in the image catalog (restore looks it up by this name)
    and ``version`` is the version of the data format its drivers write; a restore of an
    image whose driver version is newer than ``version`` is refused with VersionError.
    """

    name: str
    version: int

    @abc.abstractmethod
    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A backup driver for ``tables`` (table i is local stream i + 1).

        Must not hold resources that need releasing: ``begin()`` acquires them. Raises a
        LaminaError (e.g. DriverChoiceError) if it cannot back these tables up.
        """

    def decode_vp_facts(self, data: object, where: str) -> VpFacts:
        """Decode the JSON form of this engine's drivers' VP facts (from an image manifest).

        Raises CorruptionError naming ``where`` when a fact is missing or mistyped. Engines
        whose drivers record facts override this with their own record's ``from_json``.
        """
        return NoFacts.from_json(data, where)

    @abc.abstractmethod
    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for ``tables`` written by a driver of ``version`` (<= ours).

        Raises VersionError / UnsupportedError if this build cannot read that version.
        """


@dataclass(frozen=True, slots=True)
class DriverGroup:
    """The kernel's unit of work: one backup engine and the tables it backs up.

    A caller picks, per table, the native, snapshot or default engine and groups the tables
    by it; the choice is recorded in the image catalog (driver name, version, kind).
    """

    engine: BackupEngine
    tables: Sequence[TableSpec]
    flags: BackupFlags = field(default_factory=BackupFlags)
