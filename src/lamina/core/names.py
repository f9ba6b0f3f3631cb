"""Table name rules: a name can never make Lamina touch a path outside the database directory."""

from __future__ import annotations

from lamina.errors import InvalidNameError

#: Longest table name, in UTF-8 bytes. Archive files add ".ARM"/".ARZ" plus short suffixes,
#: which keeps every file name under the common 255-byte limit.
MAX_TABLE_NAME_BYTES = 128


def validate_table_name(name: str) -> str:
    """Return ``name`` if it is a valid table name, else raise :class:`InvalidNameError`.

    Valid: 1..128 UTF-8 bytes; no ``/``, ``\\``, NUL or other control character; not ``.``
    or ``..``; does not start with ``.`` (hidden and temporary files are Lamina's own).
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"table name must be text, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidNameError(f"table name {name!r} is not valid UTF-8") from exc
    if not raw:
        raise InvalidNameError("table name is empty")
    if len(raw) > MAX_TABLE_NAME_BYTES:
        raise InvalidNameError(
            f"table name is {len(raw)} bytes; the maximum is {MAX_TABLE_NAME_BYTES}"
        )
    if name in (".", ".."):
        raise InvalidNameError(f"table name {name!r} is reserved")
    if name.startswith("."):
        raise InvalidNameError(f"table name {name!r} must not start with '.'")
    bad = [c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad:
        raise InvalidNameError(f"table name {name!r} contains a forbidden character {bad[0]!r}")
    return name
