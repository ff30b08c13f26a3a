"""Files written whole or not at all: a crash, a full disk or an error mid-write leaves the earlier file (or none),
never a torn one. Every report, record and archive the backend writes goes through here."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import IO, Any, Iterator


@contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a sibling `.part` path to write; on normal exit it atomically replaces `path`, on error it is removed.

    The parent folder is created; the caller decides beforehand whether replacing an existing `path` is allowed."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def open_replacing(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` once the file is complete and closed (text mode: UTF-8)."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with replacing(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON to `path`, atomically."""
    with open_replacing(path) as f:
        json.dump(obj, f, indent=indent)
