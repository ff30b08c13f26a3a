"""Run-folder checkpoints that cannot run code and survive a kill, a torn file and a full disk.

Format "micd-checkpoint", version 2: a torch zip file holding one dict of tensors and plain data (str, int, float,
bool, None, lists, tuples, dicts; numpy RNG states are stored with their key as a tensor). It is read with
`torch.load(weights_only=True)`, which refuses anything else, so a file planted in a run folder cannot execute code
on --resume. Checkpoints of earlier micd versions (plain pickles) are refused; `micd convert-checkpoint` rewrites
trusted ones.

`save_checkpoint` writes a temporary file in the same folder, fsyncs it, moves the complete current file to
`previous.pt`, renames the new one into place and fsyncs the folder: at every instant the folder holds a complete
checkpoint, and `load_latest` falls back to `previous.pt` when `last.pt` is torn (copied halfway, truncated).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from typing import Callable, Optional

import numpy as np
import torch

from micd.contract import LAST_CHECKPOINT
from micd.diskfull import disk_guard

LAST = LAST_CHECKPOINT
PREVIOUS = "previous.pt"
BEST = "best.pt"
FORMAT, FORMAT_VERSION = "micd-checkpoint", 2


class CheckpointError(Exception):
    """A checkpoint micd will not use. `torn`: merely incomplete, so an earlier checkpoint may be used instead."""

    def __init__(self, path: str, reason: str, hint: str, torn: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.hint, self.torn = path, reason, hint, torn


def save_checkpoint(state: dict, path: str, keep_previous: bool = False) -> str:
    """Write `state` atomically; with `keep_previous` the file it replaces becomes PREVIOUS in the same folder.
    A full disk raises DiskFull and leaves the existing files as they were."""
    folder = os.path.dirname(os.path.abspath(path))
    with disk_guard(path):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and _complete(path):  # a torn file never replaces a good previous one
                os.replace(path, os.path.join(folder, PREVIOUS))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_folder(folder)
    return path


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint as tensors and plain data only; raise CheckpointError for anything else."""
    convert = (f"if an older micd wrote it and you trust where it came from, convert it once with `micd "
               f"convert-checkpoint {os.path.dirname(os.path.dirname(os.path.abspath(path)))}`; otherwise move it "
               "away (--resume then continues from previous.pt when there is one) or start a new run")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(path, "holds Python objects besides tensors and plain data, so it was not opened "
                              "(loading it could run code): it is from an older micd, or not from micd", convert) \
            from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(path, f"incomplete or damaged ({str(e).split('. ')[0][:120]})",
                              "move it away to start the run again", torn=True) from None
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror})", "check the file's permissions") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(path, "not a micd checkpoint", convert)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"checkpoint format {state.get('format_version')}, this micd reads "
                              f"{FORMAT_VERSION}", "resume with the micd version that wrote it")
    return state


def load_latest(folder: str, warn: Callable[[str, str], None]) -> Optional[dict]:
    """The newest usable checkpoint in `folder`: LAST, else PREVIOUS when LAST is missing or torn (then `warn`
    gets a message and the torn file); None when the folder holds neither. Refused files raise CheckpointError."""
    torn = []
    for path in (os.path.join(folder, LAST), os.path.join(folder, PREVIOUS)):
        if not os.path.isfile(path):
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            if not e.torn:
                raise
            torn.append(e)
            continue
        for e in torn:
            warn(f"{e}; resuming from {os.path.basename(path)} (iteration {state['iteration']}) instead", e.path)
        return state
    if torn:
        e = torn[0]
        raise CheckpointError(e.path, e.reason + "; there is no earlier complete checkpoint", e.hint, torn=True)
    return None


def numpy_global_state() -> dict:
    """np.random's global state as plain data (its MT19937 key as an int64 tensor)."""
    s = np.random.get_state(legacy=False)
    s["state"]["key"] = torch.from_numpy(s["state"]["key"].astype(np.int64))
    return s


def set_numpy_global_state(s: dict) -> None:
    key = np.asarray(s["state"]["key"], dtype=np.uint32)
    np.random.set_state({**s, "state": {**s["state"], "key": key}})


def _complete(path: str) -> bool:
    """True when `path` is a whole zip file (a torn one lacks the central directory at its end)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def _fsync_folder(folder: str) -> None:
    """Make the renames durable (POSIX; Windows cannot open a folder, and NTFS journals renames)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
