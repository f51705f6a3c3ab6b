"""Reading SQLite's WAL file: how many commits reached it (used by tests and benchmarks)."""

from __future__ import annotations

import struct
from pathlib import Path

WAL_HEADER = 32
FRAME_HEADER = 24


def wal_commits(database: Path) -> int:
    """Commit frames in the current WAL generation of `database`."""
    wal = Path(f"{database}-wal")
    if not wal.exists():
        return 0
    data = wal.read_bytes()
    if len(data) < WAL_HEADER:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, offset = 0, WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(data):
        header = data[offset:offset + FRAME_HEADER]
        if header[8:16] != salts:
            break  # a frame of an older generation: the current log ends here
        if struct.unpack(">I", header[4:8])[0]:
            commits += 1
        offset += FRAME_HEADER + page_size
    return commits


def reset_wal(database) -> None:
    """Checkpoint and truncate the WAL, so that what follows starts counting from zero."""
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
