"""A writable stream that proves the image written through it while it is written.

:class:`VerifyingStream` passes every byte on to its target (an upload, a temporary object)
and, on a thread of its own, runs :func:`lamina.backup.verify.verify_image` over the same
bytes as they go by: header, catalog, every chunk (checksums, decompression to the recorded
length, stream continuity), every stream's hash against the manifest, the footer, the
whole-image hash, and that nothing follows the footer. So an image written to a place that
cannot be read back before it is published (an unfinished multipart upload has no GET) is
proven exactly as if it had been written to a local file and verified there, without a
local copy. A sealed image is authenticated with the key of the writer's keyring (the
verifying thread runs in the writer's context).

Memory: at most ``depth`` written blocks wait for the verifier (the writer blocks while
they do); the verifier holds one chunk at a time.

Concurrency: written by one thread; the verifying thread is its own and ends by
:meth:`VerifyingStream.finish` or :meth:`VerifyingStream.abort`.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading

from lamina.backup.image_writer import WritableStream
from lamina.backup.verify import VerifyReport, verify_image
from lamina.errors import CorruptionError, LaminaError, UsageError

#: Blocks that may wait for the verifier (each is what the image writer wrote at once: a
#: chunk header, or a chunk of at most the image's buffer size).
DEFAULT_DEPTH = 8


class _Pipe:
    """The verifier's side: a readable stream of the blocks the writer queued."""

    def __init__(self, blocks: queue.Queue[bytes | None], stop: threading.Event) -> None:
        self._blocks = blocks
        self._stop = stop
        self._view = memoryview(b"")
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._view:
            if self._ended or self._stop.is_set():
                return b""
            block = self._blocks.get()
            if block is None:
                self._ended = True
                return b""
            self._view = memoryview(block)
        take = len(self._view) if size < 0 else min(size, len(self._view))
        out = bytes(self._view[:take])
        self._view = self._view[take:]
        return out

    def drain(self) -> None:
        """Take every block until the end marker (after a failed verification, so the
        writer never blocks on a full queue)."""
        while not self._ended:
            if self._blocks.get() is None:
                self._ended = True


class VerifyingStream:
    """A :class:`~lamina.backup.image_writer.WritableStream` onto ``target`` that verifies
    the image written through it (see the module doc).

    ``write`` passes the bytes to ``target`` first, then to the verifier; a verification
    already failed raises its CorruptionError at the next ``write``. :meth:`finish` (after
    the image writer's ``finish``) waits for the verifier and returns its report, or raises
    what it found. ``target`` is never committed or closed here.
    """

    def __init__(self, target: WritableStream, *, depth: int = DEFAULT_DEPTH) -> None:
        self.target = target
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._pipe = _Pipe(self._blocks, self._stop)
        self._report: VerifyReport | None = None
        self._error: LaminaError | None = None
        self._closed = False
        #: Bytes passed on to ``target``.
        self.bytes_written = 0
        context = contextvars.copy_context()  # the writer's keyring authenticates a seal
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True,
                                        name="lamina-verify-stream")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._report = verify_image(self._pipe)
        except LaminaError as exc:
            self._error = exc
        except Exception as exc:  # pragma: no cover - verify_image raises only LaminaErrors
            self._error = CorruptionError(f"verifying the written image failed: {exc}")
        finally:
            self._pipe.drain()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Pass ``data`` on, then queue it for the verifier (blocks while ``depth`` blocks
        wait). Raises the verifier's error, the target's, UsageError after finish/abort."""
        if self._closed:
            raise UsageError("write to a finished verifying stream")
        if self._error is not None:
            raise self._error
        block = bytes(data)
        self.target.write(block)
        self.bytes_written += len(block)
        self._blocks.put(block)
        return len(block)

    def flush(self) -> None:
        """Flush the target."""
        self.target.flush()

    def finish(self) -> VerifyReport:
        """End of the image: wait for the verifier. Returns its report (the image's header,
        catalog, manifest and size). Raises CorruptionError & co. (what verify_image
        finds: the bytes written are not a whole, valid image), UsageError (twice)."""
        if self._closed:
            raise UsageError("a verifying stream finishes once")
        self._closed = True
        self._blocks.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._report is not None
        if self._report.size != self.bytes_written:  # pragma: no cover - verify reads all
            raise CorruptionError(f"the verifier read {self._report.size} of "
                                  f"{self.bytes_written} bytes written")
        return self._report

    def abort(self) -> None:
        """Stop the verifier (the image will not be published). Idempotent; never raises."""
        if self._thread.is_alive():
            self._stop.set()
            with contextlib.suppress(queue.Empty):
                while True:  # make room for the end marker: the verifier stops reading
                    self._blocks.get_nowait()
            with contextlib.suppress(queue.Full):
                self._blocks.put_nowait(None)
            self._thread.join()
        self._closed = True


__all__ = ["DEFAULT_DEPTH", "VerifyingStream"]
