"""The btree native driver's VP facts: what a btree image records about its validity point.

Stored in the image manifest as JSON (docs/format.md, "Btree native backup stream"), with
exactly these keys: ``txnid``, ``commit_seq``, ``root_hash`` (hex), ``page_size``,
``total_pages``, ``pages_sent``, ``pages_hash`` (hex); a layer adds ``base_txnid``; an image
made by ``combine_chain`` or ``combine_segment`` adds ``combined_from`` (the ids of the
images it was combined from); an "at end" image adds ``initial``
(:class:`BtreeInitialFacts`: the snapshot S0 sent before the VP, see docs/format.md,
"At-end streams"). Read back by the restore driver (to
prove what it rebuilt), by a layer's backup driver (its base image's facts) and by the chain
glue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lamina.core.driver import FactReader, VpFacts
from lamina.engines.btree import format as btree_format
from lamina.errors import ChainError, CorruptionError


@dataclass(frozen=True, slots=True)
class BtreeInitialFacts:
    """The snapshot S0 an "at end" btree driver pinned at ``begin()`` and sent in the
    initial transfer: its meta's ``txnid``, ``commit_seq``, ``root_hash`` and
    ``total_pages``; the pages that section sent and their xxh3-128 (``pages_sent``,
    ``pages_hash``); and ``begin_seq``, the database's last commit seq when S0 was pinned.

    JSON form: ``{"txnid", "commit_seq", "root_hash" (hex), "total_pages", "pages_sent",
    "pages_hash" (hex), "begin_seq"}``.
    """

    txnid: int
    commit_seq: int
    root_hash: bytes
    total_pages: int
    pages_sent: int
    pages_hash: bytes
    begin_seq: int

    def to_json(self) -> dict[str, Any]:
        """The manifest form. Pure."""
        return {"txnid": self.txnid, "commit_seq": self.commit_seq,
                "root_hash": self.root_hash.hex(), "total_pages": self.total_pages,
                "pages_sent": self.pages_sent, "pages_hash": self.pages_hash.hex(),
                "begin_seq": self.begin_seq}

    @classmethod
    def read(cls, r: FactReader) -> BtreeInitialFacts:
        """Decode the manifest form; CorruptionError if a fact is missing or mistyped."""
        size = btree_format.HASH_SIZE
        return cls(r.integer("txnid"), r.integer("commit_seq"), r.digest("root_hash", size),
                   r.integer("total_pages"), r.integer("pages_sent"),
                   r.digest("pages_hash", size), r.integer("begin_seq"))


@dataclass(frozen=True, slots=True)
class BtreeVpFacts(VpFacts):
    """The btree snapshot frozen at a VP, and what its stream sent.

    ``txnid``, ``commit_seq`` (of the last btree commit at or before the VP), ``root_hash``
    (16 bytes), ``page_size`` and ``total_pages`` are the VP meta record's; ``pages_sent``
    and ``pages_hash`` (16 bytes, the stream trailer's xxh3-128 over the pages' bytes)
    describe the stream; ``base_txnid`` is the base image's btree txnid (layers only, else
    None); ``combined_from`` lists the image ids a combined image was made from (else
    empty); ``initial`` describes the section an "at end" driver sent before the VP (else
    None): then ``pages_sent`` and ``pages_hash`` describe the section sent after it.
    """

    txnid: int
    commit_seq: int
    root_hash: bytes
    page_size: int
    total_pages: int
    pages_sent: int
    pages_hash: bytes
    base_txnid: int | None = None
    combined_from: tuple[str, ...] = ()
    initial: BtreeInitialFacts | None = None

    @classmethod
    def of_meta(cls, meta: btree_format.Meta, pages_sent: int, pages_hash: bytes, *,
                base_txnid: int | None = None) -> BtreeVpFacts:
        """The facts of a stream of ``meta``'s snapshot that sent ``pages_sent`` pages with
        trailer hash ``pages_hash`` (a layer: on ``base_txnid``). Pure."""
        return cls(meta.txnid, meta.commit_seq, meta.root_hash, meta.page_size,
                   meta.total_pages, pages_sent, pages_hash, base_txnid)

    def to_json(self) -> dict[str, Any]:
        """The manifest form (keys as documented in the module doc). Pure."""
        out: dict[str, Any] = {
            "txnid": self.txnid, "commit_seq": self.commit_seq,
            "root_hash": self.root_hash.hex(), "page_size": self.page_size,
            "total_pages": self.total_pages, "pages_sent": self.pages_sent,
            "pages_hash": self.pages_hash.hex()}
        if self.base_txnid is not None:
            out["base_txnid"] = self.base_txnid
        if self.combined_from:
            out["combined_from"] = list(self.combined_from)
        if self.initial is not None:
            out["initial"] = self.initial.to_json()
        return out

    @classmethod
    def from_json(cls, data: object, where: str) -> BtreeVpFacts:
        """Decode the manifest form. Raises CorruptionError naming ``where`` when a fact is
        missing or mistyped (``base_txnid``, ``combined_from`` and ``initial`` are
        optional)."""
        r = FactReader(data, where)
        size = btree_format.HASH_SIZE
        base = r.integer("base_txnid") if r.has("base_txnid") else None
        combined: tuple[str, ...] = ()
        if r.has("combined_from"):
            value = r.data["combined_from"]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CorruptionError(f"{where}: VP fact 'combined_from' is not a list of "
                                      "strings")
            combined = tuple(value)
        initial = (BtreeInitialFacts.read(r.mapping("initial")) if r.has("initial")
                   else None)
        facts = cls(r.integer("txnid"), r.integer("commit_seq"), r.digest("root_hash", size),
                    r.integer("page_size"), r.integer("total_pages"), r.integer("pages_sent"),
                    r.digest("pages_hash", size), base, combined, initial)
        if initial is not None and (initial.txnid > facts.txnid
                                    or initial.begin_seq < initial.commit_seq):
            raise CorruptionError(f"{where}: VP fact 'initial' is not a snapshot at or "
                                  "before the VP")
        return facts


def base_txnid_of(facts: VpFacts | None) -> int:
    """The btree txnid at the base image's VP, from that image's decoded btree VP facts
    (``BackupFlags.base_facts`` of a layer's btree driver).

    Raises ChainError when ``facts`` are not btree facts (None: the base image has no btree
    driver data, so no layer can be taken on it). Pure.
    """
    if not isinstance(facts, BtreeVpFacts):
        raise ChainError("the base image records no btree txnid at its validity point, so "
                         "a layer cannot be taken on it")
    return facts.txnid


__all__ = ["BtreeInitialFacts", "BtreeVpFacts", "base_txnid_of"]
