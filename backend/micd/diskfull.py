"""A full disk as a reportable failure: which file could not be written and how much space is left."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Iterator, Optional

DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(Exception):
    def __init__(self, path: str, free_bytes: Optional[int]):
        free = "unknown" if free_bytes is None else f"{free_bytes / 2 ** 20:.1f} MiB"
        super().__init__(f"no space left on the disk while writing {path} ({free} free)")
        self.path, self.free_bytes = path, free_bytes


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the disk holding `path` (or its nearest existing parent folder)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


@contextmanager
def disk_guard(path: str) -> Iterator[None]:
    """Turn an out-of-space OSError raised while writing `path` into DiskFull."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path, free_bytes(path)) from e
        raise
