"""Splitting one backup stream into its two consecutive sections (the "at end" layout).

An "at end" driver's stream is an *initial section* (sent before the VP) followed by a
*final section* (sent after it), each a complete stream of its engine's format
(docs/format.md, "At-end streams"). The length of the initial section is not trusted from
anywhere but its own header: the engine's ``section_length(head)`` decodes and validates the
header (magic, version, checksum, fields) and returns the section's total length. The
splitter hands every byte to exactly one of the two consumers, in order, with ``last`` set
on each section's final piece.

Not thread-safe: one splitter is used by one thread.
"""

from __future__ import annotations

from collections.abc import Callable

from lamina.errors import CorruptionError

#: A consumer of a section: ``feed(piece, last)``.
Feed = Callable[[bytes | bytearray | memoryview, bool], None]


class SectionSplitter:
    """Routes the bytes of a two-section stream to ``first`` and then ``second``.

    ``head_size`` bytes of the initial section are gathered first and passed to
    ``section_length`` (which raises CorruptionError & co. for a bad header and returns
    the section's length, at least ``head_size``). ``where`` names the stream in errors.
    Raises CorruptionError when the stream ends inside its initial section; whatever the
    consumers raise passes through.
    """

    def __init__(self, head_size: int, section_length: Callable[[bytes], int], first: Feed,
                 second: Feed, where: str) -> None:
        self.head_size = head_size
        self.section_length = section_length
        self.first = first
        self.second = second
        self.where = where
        #: Length of the initial section, once its header was read.
        self.length: int | None = None
        self._head = bytearray()
        self._fed = 0  # bytes of the initial section handed to ``first``

    @property
    def in_final(self) -> bool:
        """True once the initial section was handed over whole."""
        return self.length is not None and self._fed == self.length

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the stream (``last``: the stream's final piece)."""
        view = memoryview(data)
        if self.length is None:
            take = min(self.head_size - len(self._head), len(view))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < self.head_size:
                if last:
                    raise CorruptionError("stream ends inside its initial section's header",
                                          where=self.where)
                return
            length = self.section_length(bytes(self._head))
            if length < self.head_size:  # pragma: no cover - an engine bug, not data
                raise CorruptionError("initial section shorter than its header",
                                      where=self.where)
            self.length = length
            head, self._head = bytes(self._head), bytearray()
            self._to_first(memoryview(head))
        if not self.in_final:
            view = self._to_first(view)
        if self.in_final:
            if len(view) or last:
                self.second(view, last)
        elif last:
            raise CorruptionError(f"stream ends inside its initial section ({self._fed} of "
                                  f"{self.length} bytes)", where=self.where)

    def _to_first(self, view: memoryview) -> memoryview:
        """Hand ``first`` what of ``view`` belongs to the initial section; return the rest."""
        assert self.length is not None
        take = min(self.length - self._fed, len(view))
        self._fed += take
        self.first(view[:take], self._fed == self.length)
        return view[take:]


__all__ = ["Feed", "SectionSplitter"]
