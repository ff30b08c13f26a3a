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


# How torch's zip writer reports a write that failed under it. Over a Python file object the OSError(ENOSPC) of the
# failed write is raised first and torch's RuntimeError (`[enforce fail at inline_container.cc:...] . unexpected pos
# N vs M`, `PytorchStreamWriter failed writing file ...: file write failed`) follows with it only as __context__;
# closing the file may then raise another ENOSPC on top. Over a path torch's C++ stream fails with
# `basic_ios::clear: iostream error` and no errno at all.
_WRITER_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed", "iostream error")
_CHAIN_LIMIT = 16  # exceptions looked at, at most, in one chain


def is_disk_full(e: BaseException) -> bool:
    """True for an out-of-space failure: DiskFull, an OSError with ENOSPC/EDQUOT, or a write failure of torch's zip
    writer (a RuntimeError, see _WRITER_FAILURES) whose __cause__/__context__ chain holds such an OSError.

    The chain is followed only through writer failures, so a different error raised while handling a full disk (a
    bug in the clean-up, say) stays what it is. A writer failure without an errno in its chain is not taken for a
    full disk: micd hands torch Python file objects, so its own writes always carry the errno, and free space
    measured afterwards would mislead both ways (the partial file is gone by then, or another process filled it)."""
    return disk_full_error(e) is not None


def disk_full_error(e: BaseException) -> Optional[BaseException]:
    """The DiskFull or out-of-space OSError that `e` is or was caused by (see is_disk_full); None when there is none.
    Bounded and safe against cyclic chains."""
    seen, todo = set(), [e]
    while todo and len(seen) < _CHAIN_LIMIT:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DiskFull) or (isinstance(x, OSError) and x.errno in DISK_FULL_ERRNOS):
            return x
        if _is_writer_failure(x):
            todo += [x.__cause__, x.__context__]
    return None


def _is_writer_failure(e: BaseException) -> bool:
    if not isinstance(e, RuntimeError):
        return False
    text = str(e)
    return any(s in text for s in _WRITER_FAILURES)


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
    """Turn an out-of-space failure raised while writing `path` (an OSError, or torch's writer failing on one; see
    is_disk_full) into DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
        if is_disk_full(e):
            raise DiskFull(path, free_bytes(path)) from e
        raise
