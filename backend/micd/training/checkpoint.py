"""Checkpoints written atomically (temporary file in the same folder, fsync, rename), so a kill never tears one."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import torch

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj: Any, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str, map_location: Optional[str] = "cpu") -> dict:
    """Load one of our own checkpoints (it holds RNG states as Python objects, hence weights_only=False)."""
    return torch.load(path, map_location=map_location, weights_only=False)
