"""Every error Lamina raises, in one tree, each class with a fixed process exit code.

Callers catch :class:`LaminaError` to catch everything Lamina raises on purpose; any other
exception escaping Lamina is a bug. The CLI prints ``str(error)`` as one line and exits with
``error.exit_code``.

::

    LaminaError                      1  (never raised directly)
    ├── UsageError                   2  an invalid request; nothing stored is wrong (also:
    │                                   an encrypted repository opened without a passphrase)
    │   ├── InvalidNameError         2  table name with a separator, "..", NUL, or too long
    │   ├── KeyTooLargeError         2  key longer than the engine's documented maximum
    │   ├── ValueTooLargeError       2  value/row larger than the documented maximum
    │   ├── TransactionClosedError   2  a transaction or cursor used after commit/abort/close
    │   ├── ReadOnlyError            2  a write through a read-only handle or transaction
    │   ├── DriverChoiceError        2  a backup driver forced on an engine that cannot use it
    │   └── ClosedError              2  a Database or dbm handle used after close()
    ├── NotFoundError                3  a database, table, image or backup that does not exist
    │   ├── TableNotFoundError       3
    │   └── PinExpiredError          3  an interrupted backup's pin expired: nothing to resume
    ├── AlreadyExistsError           3  creating what exists (a table, DEST without --force)
    ├── DataError                    -  bytes on disk or in an image are not what they must be
    │   ├── CorruptionError          4  checksum/structure failure: file, page/offset, what
    │   ├── NotADatabaseError        5  wrong magic: this is not a Lamina file of that kind
    │   ├── VersionError             6  a format version (or driver version) from the future
    │   ├── UnsupportedError         6  a codec, engine or driver this build does not have
    │   ├── CheckFailedError         7  the checker found problems (carries the findings)
    │   ├── ChainError              11  a backup chain with a gap, wrong order or a wrong base
    │   └── AuthenticationError     14  authentication failed: a wrong passphrase, no key for an
    │                                   encrypted image, or a key file, chunk or manifest whose
    │                                   MAC or AEAD tag does not verify (tampered, or moved)
    ├── LockedError                  8  a lock could not be taken within its timeout, or a
    │                                   repository lease was lost mid-operation (taken over
    │                                   after a stall, or not renewable until it expired):
    │                                   the operation stopped and published nothing
    ├── StorageError                 9  the OS or an object store refused I/O (disk full, EIO,
    │   │                               a server failing after retries)
    │   ├── AccessDeniedError       12  an object store rejected the credentials or the request
    │   └── NoSuchBucketError       13  an object store has no such bucket
    └── CancelledError              10  an operation was cancelled on request

Exit code 0 is success. Codes are part of the CLI contract and never change meaning.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any


class LaminaError(Exception):
    """Root of every error Lamina raises on purpose. ``exit_code`` is the CLI's exit status."""

    exit_code: int = 1


class UsageError(LaminaError):
    """The request itself is invalid; nothing stored is damaged or changed."""

    exit_code = 2


class InvalidNameError(UsageError):
    """A table name is empty, too long, has a path separator, NUL, or is ``.``/``..``."""


class KeyTooLargeError(UsageError):
    """A key is longer than the engine's maximum key size."""


class ValueTooLargeError(UsageError):
    """A value or archive row is larger than the documented maximum."""


class TransactionClosedError(UsageError):
    """A transaction or cursor was used after it ended."""


class ReadOnlyError(UsageError):
    """A write was attempted through a read-only database or transaction."""


class DriverChoiceError(UsageError):
    """A backup driver was forced for a table whose engine cannot use it."""


class ClosedError(UsageError):
    """A database (or dbm) handle was used after ``close()``."""


class NotFoundError(LaminaError):
    """A database, table, image or backup does not exist."""

    exit_code = 3


class TableNotFoundError(NotFoundError):
    """The named table is not in the catalog."""


class PinExpiredError(NotFoundError):
    """``backup --resume``: the interrupted backup's durable pin expired, so its validity
    point may no longer exist (its pages may have been reused): there is nothing to resume."""


class AlreadyExistsError(LaminaError):
    """Something to be created exists already (a table, a restore destination)."""

    exit_code = 3


class DataError(LaminaError):
    """Stored bytes (database file or backup image) are not what they must be."""

    exit_code = 4


class CorruptionError(DataError):
    """A checksum or structural check failed.

    ``path`` names the file, ``where`` the page number, block offset, stream/chunk or
    byte offset, and ``what`` the failed check, so the one-line message locates the damage.
    """

    exit_code = 4

    def __init__(self, what: str, *, path: object = None, where: str | None = None) -> None:
        self.what = what
        self.path = None if path is None else str(path)
        self.where = where
        parts = [p for p in (self.path, where) if p]
        super().__init__(f"corrupt: {what}" + (f" ({', '.join(parts)})" if parts else ""))


class NotADatabaseError(DataError):
    """A file or directory lacks the magic of the Lamina file kind it should be."""

    exit_code = 5


class VersionError(DataError):
    """A format or driver version newer than this build understands."""

    exit_code = 6


class UnsupportedError(DataError):
    """A codec, engine or driver named by stored data is not available in this build."""

    exit_code = 6


class CheckFailedError(DataError):
    """The checker found problems; ``findings`` lists them (page, what, expected, found)."""

    exit_code = 7

    def __init__(self, message: str, findings: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.findings = list(findings)


class ChainError(DataError):
    """A backup chain is broken: a gap, wrong order, or a layer on the wrong base."""

    exit_code = 11


class AuthenticationError(DataError):
    """Authentication failed: a wrong passphrase, no key (or passphrase) for an encrypted
    image or repository, or bytes whose MAC or AEAD tag does not verify under the key (a
    tampered key file, chunk or manifest; a chunk moved from another image or position)."""

    exit_code = 14


class LockedError(LaminaError):
    """A lock (database writer, table writer, commit blocker, repository) timed out, or a
    repository lease was lost while its operation ran (that operation published nothing)."""

    exit_code = 8


class StorageError(LaminaError):
    """The operating system refused an I/O operation (disk full, permissions, I/O error)."""

    exit_code = 9


class AccessDeniedError(StorageError):
    """An object store refused the request: wrong or missing credentials, a signature it
    does not accept, or no permission on the bucket or key."""

    exit_code = 12


class NoSuchBucketError(StorageError):
    """An object store answered that the bucket of an ``s3://`` repository does not exist
    (``lamina repo init`` creates it)."""

    exit_code = 13


class CancelledError(LaminaError):
    """The operation was cancelled on request; nothing half-done is left looking valid."""

    exit_code = 10


def storage_error(exc: OSError, action: str, path: object) -> StorageError:
    """Translate an ``OSError`` into a one-line :class:`StorageError` naming action and path."""
    reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
    err = StorageError(f"cannot {action} {path}: {reason}")
    err.__cause__ = exc
    return err


#: Every exit code the CLI can return, for the documentation and the tests.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report)",
    2: "usage error",
    3: "not found / already exists",
    4: "corruption",
    5: "not a Lamina file",
    6: "version or feature from a newer/other build",
    7: "checker found problems",
    8: "locked (timeout)",
    9: "storage error (disk full, I/O, permissions)",
    10: "cancelled",
    11: "backup chain error",
    12: "object store access denied (credentials or permission)",
    13: "object store bucket does not exist",
    14: "authentication failed (wrong passphrase, missing key, tampered data)",
}
