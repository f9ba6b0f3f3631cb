"""Every constant and struct of an archive table's files (docs/format.md, "Archive tables").

An archive table ``T`` is two files in the database directory:

* ``T.ARM`` — the meta file: two self-validating 160-byte slots at offsets 0 and 512. The
  valid slot with the highest counter is current; a commit overwrites the *other* slot, so a
  torn slot write leaves the previous state readable.
* ``T.ARZ`` — the data file: a 128-byte file header, then blocks. A block is a 56-byte header
  then ``stored_length`` bytes of compressed payload.

Plus transient / retained names: ``T.ARZ.new`` (an optimize in progress) and
``T.ARM.g<N>`` / ``T.ARZ.g<N>`` (generation N kept for a running backup).

All integers are little-endian. Validation order everywhere: magic, version, checksum.
Checksums are ``xxh3_64`` (seed 0).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

# ---------------------------------------------------------------- limits
#: Largest row, in bytes. Rows are length-prefixed by a u32 in the payload; the limit keeps
#: a single-row block and its decompression buffer reasonable.
MAX_ROW_BYTES = 16 * 1024 * 1024
#: Block target size bounds (raw bytes of a block's payload before compression).
MIN_BLOCK_TARGET = 1
MAX_BLOCK_TARGET = 64 * 1024 * 1024
DEFAULT_BLOCK_TARGET = 256 * 1024
#: Default target for ``optimize`` when the caller gives none: at least this, or 4x the table's.
DEFAULT_OPTIMIZE_TARGET = 1024 * 1024

# ---------------------------------------------------------------- codecs
CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_ZSTD = 2
CODEC_IDS: dict[str, int] = {"none": CODEC_NONE, "zlib": CODEC_ZLIB, "zstd": CODEC_ZSTD}
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}
#: zstd 6, not the library's 3: archive blocks are written once and kept; on per-commit
#: blocks of log text, level 6 is where zstd beats zlib 6 on both size and speed
#: (bench/archive.py), while level 3 is ~15% larger.
DEFAULT_LEVELS: dict[str, int] = {"none": 0, "zlib": 6, "zstd": 6}
#: Valid levels: :data:`lamina.core.compression.LEVEL_RANGES` (the one table).

# ---------------------------------------------------------------- .ARM meta file
ARM_MAGIC = b"LAMARCM\x00"
#: Version 2 added the chain head (docs/format.md, "Archive block chain"). A version-1 slot
#: (an older build, no chain head) is refused with a VersionError naming the older format.
ARM_VERSION = 2
#: Each slot sits in its own 512-byte sector so a torn write of one never touches the other.
ARM_SLOT_STRIDE = 512
ARM_SLOT_COUNT = 2
ARM_FILE_SIZE = ARM_SLOT_STRIDE * ARM_SLOT_COUNT
#: Slot body (checksummed): magic 8s, version u32, slot size u32, counter u64, table id u32,
#: codec u8, level i8, flags u16, generation u64, row count u64, next row id u64,
#: committed data length u64, block target u32, reserved u32, last commit seq u64,
#: generation commit seq u64, block count u64, raw bytes u64, chain head 32s (the block
#: chain's head at the committed length), reserved 16 bytes.
ARM_SLOT_BODY = struct.Struct("<8sIIQIBbHQQQQIIQQQQ32s16x")
ARM_SLOT_CHECKSUM = struct.Struct("<Q")
ARM_SLOT_SIZE = ARM_SLOT_BODY.size + ARM_SLOT_CHECKSUM.size  # 160
#: The slot size of version 1 (no chain head): recognised only to name it in the refusal.
ARM_V1_SLOT_SIZE = 128
#: Bytes of the slot a ``mid_meta_write`` failpoint lets through before killing the process.
ARM_SLOT_TEAR_AT = ARM_SLOT_SIZE // 2

# ---------------------------------------------------------------- .ARZ data file header
ARZ_MAGIC = b"LAMARCZ\x00"
#: Version 2 stores the generation's base chain head in the header.
ARZ_VERSION = 2
#: File header body (checksummed): magic 8s, version u32, header size u32, table id u32,
#: codec u8, level i8, reserved u16, generation u64, block target u32, reserved u32,
#: then the generation's base state as published: row count u64, next row id u64,
#: data length u64, block count u64, raw bytes u64, generation commit seq u64, chain head
#: 32s (after the base blocks).
ARZ_HEADER_BODY = struct.Struct("<8sIIIBbHQIIQQQQQQ32s")
ARZ_HEADER_CHECKSUM = struct.Struct("<Q")
ARZ_HEADER_SIZE = ARZ_HEADER_BODY.size + ARZ_HEADER_CHECKSUM.size  # 128

# ---------------------------------------------------------------- blocks
BLOCK_MAGIC = b"ARZB"
#: Block header body (checksummed): magic 4s, codec u8, flags u8, reserved u16,
#: first row id u64, row count u32, raw length u32, stored length u32, reserved u32,
#: commit seq u64, payload checksum u64.
BLOCK_HEADER_BODY = struct.Struct("<4sBBHQIIIIQQ")
BLOCK_HEADER_CHECKSUM = struct.Struct("<Q")
BLOCK_HEADER_SIZE = BLOCK_HEADER_BODY.size + BLOCK_HEADER_CHECKSUM.size  # 56
#: Raw payload layouts, chosen per block by the flags byte:
#: flags 0: ``row_count`` u32 row lengths, then the rows back to back (any bytes);
#: BLOCK_FLAG_LINES: the rows joined by LINE_SEPARATOR (used when no row of the block
#: contains it, i.e. most text): the boundary costs ~nothing once compressed and splitting
#: is one C call.
BLOCK_FLAG_LINES = 0x01
BLOCK_FLAGS_KNOWN = BLOCK_FLAG_LINES
LINE_SEPARATOR = b"\n"
#: Largest raw payload a valid block can have: a block closes once it reaches its target
#: (<= MAX_BLOCK_TARGET), so it holds less than the target plus one more row (and its
#: length). A restore refuses a larger one before allocating it.
MAX_BLOCK_RAW = MAX_BLOCK_TARGET + 4 + MAX_ROW_BYTES

# ---------------------------------------------------------------- file names
ARM_SUFFIX = ".ARM"
ARZ_SUFFIX = ".ARZ"
NEW_SUFFIX = ".new"
RETAINED_RE = re.compile(r"\.(ARM|ARZ)\.g([0-9]+)$")


def arm_path(directory: Path, name: str) -> Path:
    """``directory/NAME.ARM``."""
    return Path(directory) / (name + ARM_SUFFIX)


def arz_path(directory: Path, name: str) -> Path:
    """``directory/NAME.ARZ``."""
    return Path(directory) / (name + ARZ_SUFFIX)


def arz_new_path(directory: Path, name: str) -> Path:
    """``directory/NAME.ARZ.new``: the next generation while optimize writes it."""
    return Path(directory) / (name + ARZ_SUFFIX + NEW_SUFFIX)


def retained_paths(directory: Path, name: str, generation: int) -> tuple[Path, Path]:
    """``(NAME.ARM.g<N>, NAME.ARZ.g<N>)``: generation N kept for a running backup."""
    d = Path(directory)
    return d / f"{name}{ARM_SUFFIX}.g{generation}", d / f"{name}{ARZ_SUFFIX}.g{generation}"
