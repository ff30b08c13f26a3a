"""JSON files written whole or not at all: a crash or a full disk mid-write leaves the earlier file, never a torn one."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """Write `obj` to `path` through a sibling `.part` file and an atomic rename."""
    tmp = os.path.abspath(path) + ".part"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
