"""`micd convert-checkpoint RUN_DIR`: rewrite the checkpoints of a run made by an earlier micd in today's format."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """Rewrite RUN_DIR/checkpoints/{last,previous,best}.pt written by an earlier micd (plain pickles, which
micd train --resume refuses) as tensors and plain data, so that the run can be resumed. This UNPICKLES the old files,
which runs any code they hold: use it only on run folders you made yourself or otherwise trust. The originals are
kept in RUN_DIR/checkpoints/before-convert/ (an original already kept there stops the command). Damaged files and
checkpoints of another micd format version are skipped. Exit codes: 0 done (or nothing to convert), 2 no such run
folder or an earlier backup in the way, 1 a file that is not an old micd checkpoint or could not be rewritten (left
as it was)."""


def register(sub) -> None:
    p = sub.add_parser("convert-checkpoint", help="convert a trusted run's old checkpoints", description=DESCRIPTION)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds checkpoints/)")
    p.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"micd convert-checkpoint: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from micd.diskfull import DiskFull
    from micd.training.checkpoint import (BEST, FORMAT, LAST, PREVIOUS, CheckpointError, load_checkpoint,
                                          numpy_global_state, save_checkpoint)

    folder = os.path.join(args.run_dir, "checkpoints")
    if not os.path.isdir(folder):
        return _fail(f"{folder}: no such folder", 2)
    backup = os.path.join(folder, "before-convert")
    for name in (LAST, PREVIOUS, BEST):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            load_checkpoint(path)
            print(f"{path}: already in the current format")
            continue
        except CheckpointError as e:
            if e.torn or "checkpoint format" in e.reason or "cannot be read" in e.reason:
                # damaged, unreadable, or another micd version's format: nothing this command can rewrite
                print(f"{path}: skipped, {e.reason}")
                continue
        kept = os.path.join(backup, name)
        if os.path.exists(kept):
            return _fail(f"{kept} already holds an original from an earlier conversion; move it away first", 2)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user, see DESCRIPTION
        except Exception as e:  # noqa: BLE001 - any failure of a foreign pickle is reported, not raised
            return _fail(f"{path}: cannot be read ({type(e).__name__}: {str(e)[:200]}); left as it was", 1)
        if not isinstance(state, dict) or not {"iteration", "rng"} <= set(state) or \
                state.get("format") not in (None, FORMAT):
            return _fail(f"{path}: not a checkpoint of micd; left as it was", 1)
        rng = state.get("rng", {})
        if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):  # the legacy tuple holds an ndarray
            np.random.set_state(rng["numpy"])
            rng["numpy"] = numpy_global_state()
        os.makedirs(backup, exist_ok=True)
        os.replace(path, kept)
        try:
            save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, path)
            load_checkpoint(path)
        except (CheckpointError, DiskFull, OSError, RuntimeError) as e:  # put the original back where it was
            os.replace(kept, path)
            hint = "; free space and run it again" if isinstance(e, DiskFull) else ""
            return _fail(f"{path}: cannot be converted ({getattr(e, 'reason', e)}); left as it was{hint}", 1)
        print(f"{path}: converted (the original is in {backup})")
    return 0
