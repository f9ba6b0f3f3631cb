"""Constants of the ``LOCK`` file (specified in docs/format.md, "Lock file").

The lock file is runtime state shared by every process that has the database open: it is
memory-mapped, re-initialized by the first process to open the database after all others
closed it, and never holds committed data. Byte-range locks (``fcntl``) on fixed offsets
are its mutexes; a lock held by a process dies with the process.
"""

from __future__ import annotations

import struct

FILE_NAME = "LOCK"
MAGIC = b"LAMLOCK\x00"
VERSION = 1

#: Static header: magic[8], version u32, header_size u32, slot_count u32, slot_size u32,
#: checksum u64 (xxh3_64 of the 24 bytes before it).
STATIC_HEADER = struct.Struct("<8sIIII")
STATIC_CHECKSUM = struct.Struct("<Q")
STATIC_SIZE = STATIC_HEADER.size + STATIC_CHECKSUM.size  # 32

#: Dynamic fields (offsets into the mapped header page).
OFF_COMMIT_SEQ = 32          # u64: last commit seq handed out
OFF_INIT_COUNT = 40          # u64: how many times the file was (re)initialized
OFF_BTREE_META_LEN = 48      # u32: length of the published btree meta record
OFF_BTREE_META_SEQ = 56      # u64: seqlock of the record: odd while it is being rewritten
OFF_BTREE_META = 64          # up to BTREE_META_MAX bytes: last committed btree meta record
BTREE_META_MAX = 448
OFF_BTREE_FAILED = 512       # u64: 1 once a commit failed mid-meta and could not be undone
OFF_BTREE_UNSYNCED = 520     # u64: 1 while the last btree commit's meta was not fsynced
#: Durable backup pins (the ``BACKUP_PINS`` file, :mod:`lamina.core.pins`) mirrored here so
#: that writers of every process see them with memory reads: PIN_ENTRIES entries of
#: (btree txnid u64, lease expiry ns u64); txnid 0 = empty entry.
OFF_PINS = 528
PIN_ENTRIES = 8
PIN_ENTRY_SIZE = 16

HEADER_SIZE = 4096
SLOT_COUNT = 256
SLOT = struct.Struct("<QQQQ")  # pid, txnid (0 = slot idle), acquired_ns, kind
SLOT_SIZE = SLOT.size          # 32
FILE_SIZE = HEADER_SIZE + SLOT_COUNT * SLOT_SIZE

#: Slot kinds.
SLOT_READER = 0
SLOT_BACKUP = 1

#: Byte-range lock offsets (locks may lie past end of file; they guard nothing but themselves).
LOCK_ALIVE = 0               # shared by every process with the db open; exclusive to (re)init
LOCK_BTREE_WRITER = 1        # the single btree writer
LOCK_COMMIT_GATE = 2         # turnstile so a backup is not starved by a stream of commits
LOCK_COMMIT_BLOCKER = 3      # shared while publishing a commit; exclusive to create a VP
LOCK_SEQ_MUTEX = 4           # guards the commit seq counter
LOCK_HISTORY = 5             # guards the backup history file
LOCK_DDL = 6                 # create/drop table and orphan cleanup, across processes
LOCK_PINS = 7                # guards the BACKUP_PINS file and its mirror (OFF_PINS)
LOCK_SLOT_BASE = 1 << 20     # + slot index: held by the slot's owner while the slot is in use
LOCK_TABLE_WRITER_BASE = 1 << 32   # + table id: archive table writer
LOCK_TABLE_BACKUP_BASE = 1 << 33   # + table id: default-driver table lock (blocks writers)
