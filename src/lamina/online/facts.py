"""The VP facts of an image: what each of its drivers recorded about the validity point,
decoded into the typed record of the engine that wrote it.

An image's manifest keeps every driver's facts as JSON (catalog order); the engine of the
driver decodes them (:meth:`~lamina.core.driver.BackupEngine.decode_vp_facts`, engines
from :func:`lamina.online.plan.restore_engines`). A missing or mistyped fact is a
CorruptionError naming the image and the driver, and so are facts that contradict the
image's own VP: an archive driver's ``vp_seq`` other than the manifest's VP commit seq, a
btree driver's ``commit_seq`` after it. Pure: decoding reads no file.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from lamina.backup import image_format
from lamina.backup.logical import LogicalVpFacts
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import DriverProtocolError, VpFacts
from lamina.engines.archive.facts import ArchiveVpFacts
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.errors import CorruptionError, UnsupportedError
from lamina.online.plan import restore_engines

T = TypeVar("T", bound=VpFacts)


class Image(Protocol):
    """What the VP facts are read from: an image's catalog and manifest (an
    :class:`~lamina.backup.image_reader.ImageInfo`, a restore's or a backup's result)."""

    @property
    def catalog(self) -> image_format.ImageCatalog: ...

    @property
    def manifest(self) -> image_format.Manifest: ...


class ImageFacts:
    """The VP facts of one image's drivers, each decoded (once, on first use) by the engine
    of its driver. ``label`` names the image in errors. Not thread-safe (a cache)."""

    def __init__(self, image: Image, label: str) -> None:
        self.catalog = image.catalog
        self.manifest = image.manifest
        self.label = label
        self._decoded: dict[int, VpFacts] = {}

    def _index(self, driver: str) -> int | None:
        for i, entry in enumerate(self.catalog.drivers):
            if entry.name == driver:
                return i
        return None

    def of(self, driver: str) -> VpFacts | None:
        """The facts of the image's driver named ``driver``; None if the image has no such
        driver. Raises CorruptionError (a missing or mistyped fact, or one that contradicts
        the image's VP: see the module doc), UnsupportedError (a driver this build does not
        know)."""
        i = self._index(driver)
        if i is None:
            return None
        if i not in self._decoded:
            engine = restore_engines().get(driver)
            if engine is None:
                raise UnsupportedError(f"{self.label} uses backup driver {driver!r}, which "
                                       "this build does not have")
            where = f"{self.label}, {driver} driver"
            facts = engine.decode_vp_facts(self.manifest.vp.drivers[i], where)
            self._check_vp(facts, where)
            self._decoded[i] = facts
        return self._decoded[i]

    def _check_vp(self, facts: VpFacts, where: str) -> None:
        """CorruptionError if ``facts`` contradict the manifest's VP commit seq."""
        vp = self.manifest.vp.commit_seq
        if isinstance(facts, ArchiveVpFacts) and facts.vp_seq != vp:
            raise CorruptionError(f"{where}: VP fact 'vp_seq' is {facts.vp_seq}, the image's "
                                  f"VP commit seq is {vp}")
        if isinstance(facts, BtreeVpFacts) and facts.commit_seq > vp:
            raise CorruptionError(f"{where}: VP fact 'commit_seq' is {facts.commit_seq}, after "
                                  f"the image's VP commit seq {vp}")

    def check(self) -> None:
        """Decode every driver's facts and cross-check them with the VP (raises as
        :meth:`of`)."""
        self.by_driver()

    def by_driver(self) -> dict[str, VpFacts]:
        """The facts of every driver of the image, by driver name (raises as :meth:`of`)."""
        out: dict[str, VpFacts] = {}
        for entry in self.catalog.drivers:
            facts = self.of(entry.name)
            assert facts is not None
            out[entry.name] = facts
        return out

    def btree(self) -> BtreeVpFacts | None:
        """The btree native driver's facts; None if the image has no btree data."""
        return _typed(self.of(ENGINE_BTREE), BtreeVpFacts, ENGINE_BTREE)

    def archive(self) -> ArchiveVpFacts | None:
        """The archive native driver's facts; None if the image has no archive driver."""
        return _typed(self.of(ENGINE_ARCHIVE), ArchiveVpFacts, ENGINE_ARCHIVE)

    def table_rows(self) -> dict[str, int]:
        """The row count every driver that counts rows (archive native, snapshot, default)
        recorded for each of its tables, by table name."""
        rows: dict[str, int] = {}
        for entry in self.catalog.drivers:
            facts = self.of(entry.name)
            if isinstance(facts, ArchiveVpFacts | LogicalVpFacts):
                rows.update((name, t.rows) for name, t in facts.tables.items())
        return rows


def _typed(facts: VpFacts | None, kind: type[T], driver: str) -> T | None:
    if facts is None or isinstance(facts, kind):
        return facts
    raise DriverProtocolError(f"the {driver} engine decoded its VP facts as "
                              f"{type(facts).__name__}, not {kind.__name__}")


__all__ = ["Image", "ImageFacts"]
