"""The archive native "at end" backup driver: each table's blocks go mostly before the VP.

Each table's stream (docs/format.md, "At-end streams") is two archive streams one after
the other, each in the format of :mod:`lamina.engines.archive.stream`:

* **initial section** (the kernel's initial transfer, before the VP): the table as of the
  commit seq S0 read at ``begin()`` — header, its meta as of S0, the data file bytes up to
  its committed length L0 then (in a layer: from the base position, as an "at begin" layer
  would send it);
* **final section** (after the VP): a *tail* on the initial section — header naming L0 as
  its base position, the meta as of the VP, then only the bytes ``[L0, VP position)`` —
  or, if an ``optimize`` replaced the table's generation between S0 and the VP, the table
  whole (base position 0), which a restore then takes instead of the initial section.

Both sections are made by :class:`~lamina.engines.archive.backup.TableBackup`, the "at
begin" driver's table backup: the initial one is cut at S0 exactly as an "at begin" backup
cuts at its VP (the backup slot is taken before S0 is read, so the generation current at S0
is retained however often ``optimize`` runs), and the final one is a layer on the initial
one's facts.

Concurrency: one driver is used by one thread (the kernel's); writers and ``optimize`` go
on in any process; ``lock()``/``unlock()`` are memory only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamina.core.driver import Buffer, DriverKind, Result, TableSpec
from lamina.core.lockfile import LockFile
from lamina.engines.archive.backup import ArchiveBackupDriver, DriverState, TableBackup
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.stream import STREAM_HEAD_SIZE
from lamina.errors import UsageError


class ArchiveAtEndDriver(ArchiveBackupDriver):
    """Sends every table's initial section before the VP and its final section after it
    (kind "at end"). It is the "at begin" driver's protocol and resources (one backup slot,
    one file per table being read) with a second, earlier cut: see the module doc.

    States: START -> WAITING (``begin``: slot, tables probed, S0 read; initial transfer
    until READY) -> ``lock`` (VP seq, memory only) -> DUMPING (final sections) -> DONE.
    ``cancel()`` at any point. A failing call returns ERROR with ``error`` set.
    """

    label = "archive at-end"

    kind = DriverKind.AT_END

    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec], *,
                 layer: bool = False, base: ArchiveVpFacts | None = None) -> None:
        super().__init__(directory, lockfile, tables, layer=layer, base=base)
        #: The commit seq the initial sections are cut at (read by ``begin()``).
        self.begin_seq: int | None = None
        self.finals: list[TableBackup] = []
        self._initial_done = False
        self._initial_current = 0
        self._final_current = 0

    def pin_facts(self) -> dict[str, Any] | None:
        """None: an "at end" backup cannot be resumed (its VP follows the bulk copy, which
        a resume would have to repeat from a snapshot that no pin keeps)."""
        return None

    def begin(self, buf_size: int) -> Result:
        """As the "at begin" driver's (backup slot, tables probed), then read S0: the last
        commit seq handed out. OK or ERROR."""
        result = super().begin(buf_size)
        if result is Result.OK:
            self.begin_seq = self.lockfile.commit_seq()
        return result

    def lock(self) -> Result:
        """Record the VP seq (memory only), once the initial transfer said READY."""
        if not self._initial_done:
            self.error = UsageError("archive at-end driver: lock() before the initial "
                                    "transfer ended")
            self.state = DriverState.ERROR
            return Result.ERROR
        return super().lock()

    def get_data(self, buffer: Buffer) -> Result:
        """Before the VP: the next bytes of the initial sections, table after table (READY
        with the final buffer of the last). After it: the final sections, each table's
        last buffer ``last`` (DONE with the last table's). ERROR on failure (NotFoundError:
        a generation not retained; CorruptionError; StorageError)."""
        def step() -> Result:
            if self.vp_seq is None:
                return self._initial(buffer)
            return self._final(buffer)
        result = self._guard(step)
        if result is Result.ERROR:
            buffer.data, buffer.last = b"", False
        return result

    def _capacity(self, buffer: Buffer) -> int:
        return min(buffer.capacity, self.buf_size or buffer.capacity)

    def _initial(self, buffer: Buffer) -> Result:
        self._expect("get_data", DriverState.WAITING)
        if self._initial_done or self.begin_seq is None:
            raise UsageError("archive at-end driver: get_data() after READY, before lock()")
        while self._initial_current < len(self.tables):
            table = self.tables[self._initial_current]
            if table.state is None:
                table.prepare(self.begin_seq)
            data, finished = table.fill(self._capacity(buffer))
            buffer.stream, buffer.data = table.stream, data
            if not finished:
                return Result.OK
            table.close()  # the stream goes on after the VP: no ``last`` here
            self._initial_current += 1
            if self._initial_current < len(self.tables):
                return Result.OK
        self._initial_done = True
        return Result.READY

    def _final(self, buffer: Buffer) -> Result:
        if self.state is DriverState.WAITING:
            self.state = DriverState.DUMPING
        self._expect("get_data", DriverState.DUMPING)
        assert self.vp_seq is not None
        while self._final_current < len(self.tables):
            i = self._final_current
            if i == len(self.finals):
                first = self.tables[i]
                self.finals.append(TableBackup(self.directory, first.spec, first.stream,
                                               layer=True, base=first.facts()))
                self.finals[i].prepare(self.vp_seq)
            table = self.finals[i]
            data, finished = table.fill(self._capacity(buffer))
            buffer.stream, buffer.data = table.stream, data
            if not finished:
                return Result.OK
            buffer.last = True
            table.close()
            self._final_current += 1
            if self._final_current < len(self.tables):
                return Result.OK
            break
        self.state = DriverState.DONE
        return Result.DONE

    def vp_info(self) -> ArchiveVpFacts:
        """The VP seq, S0 (``begin_seq``) and per table the final section's facts (its
        ``base_position``: where it starts) with the initial section's as ``initial``.
        Memory only. Raises UsageError before ``lock()``."""
        if self.vp_seq is None or self.begin_seq is None:
            raise UsageError("archive at-end driver: vp_info() before lock()")
        tables: dict[str, ArchiveTableFacts] = {}
        for first, final in zip(self.tables, self.finals, strict=False):
            got, initial = final.facts(), first.facts()
            if got is None or initial is None:
                continue
            tables[final.name] = dataclasses.replace(got, initial=initial)
        return ArchiveVpFacts(self.vp_seq, tables, begin_seq=self.begin_seq)

    def _release(self) -> None:
        for t in self.finals:
            t.close()
        super()._release()

    def init_size(self) -> int:
        """Estimated initial sections: per table, header + meta + the committed length seen
        by ``begin()``. O(tables), no I/O."""
        return sum(STREAM_HEAD_SIZE + t.estimate for t in self.tables)

    def size(self) -> int:
        """The initial sections' estimate plus the final sections' (header + meta + tail,
        once known). O(tables), no I/O."""
        finals = sum(STREAM_HEAD_SIZE + (t.state.position - t.start if t.state else 0)
                     for t in self.finals)
        return self.init_size() + finals


__all__ = ["ArchiveAtEndDriver"]
