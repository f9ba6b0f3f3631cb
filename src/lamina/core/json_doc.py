"""Small versioned JSON documents (a repository config, a key file): the shared first steps
of decoding one — bound the size, parse, check the magic, then the version.

What each document holds after that (its checksum or seal, its fields) is checked by its own
module; this one only makes sure every such document is refused the same way, in the order
docs/format.md prescribes (magic, then version, then checksum). Pure; thread-safe.
"""

from __future__ import annotations

import json
from typing import Any

from lamina.errors import CorruptionError, NotADatabaseError, VersionError


def load_versioned(data: bytes, *, where: object, magic: str, newest: int, max_size: int,
                   kind: str, format_name: str, encoding: str = "utf-8") -> dict[str, Any]:
    """The JSON object of a document of ``kind`` read from ``where`` (named in errors),
    whose ``version`` field is between 1 and ``newest``.

    Raises NotADatabaseError (larger than ``max_size``, not JSON in ``encoding``, not an
    object, or another magic: not such a document at all), CorruptionError (no valid
    version), VersionError (a version newer than ``newest``: made by a newer build).
    """
    obj: Any = None
    if len(data) <= max_size:
        try:
            obj = json.loads(data.decode(encoding))
        except (UnicodeDecodeError, ValueError, RecursionError):
            obj = None
    if not isinstance(obj, dict) or obj.get("magic") != magic:
        raise NotADatabaseError(f"{where} is not a Lamina {kind}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptionError(f"{kind} has no valid version", path=where)
    if version > newest:
        raise VersionError(f"{where} is {format_name} {version}; this build reads up to "
                           f"{newest}")
    return obj


__all__ = ["load_versioned"]
