"""`micd convert-checkpoint RUN_DIR`: rewrite the checkpoints of a run made by an earlier micd in today's format."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """Rewrite RUN_DIR/checkpoints/{last,previous,best}.pt written by an earlier micd (plain pickles, which
micd train --resume refuses) as tensors and plain data, so that the run can be resumed. This UNPICKLES the old files,
which runs any code they hold: use it only on run folders you made yourself or otherwise trust. The originals are
kept in RUN_DIR/checkpoints/before-convert/. Exit codes: 0 done (or nothing to convert), 2 no such run folder,
1 a file holds more than micd writes (left as it was)."""


def register(sub) -> None:
    p = sub.add_parser("convert-checkpoint", help="convert a trusted run's old checkpoints", description=DESCRIPTION)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds checkpoints/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from micd.training.checkpoint import (BEST, LAST, PREVIOUS, CheckpointError, load_checkpoint, numpy_global_state,
                                          save_checkpoint)

    folder = os.path.join(args.run_dir, "checkpoints")
    if not os.path.isdir(folder):
        print(f"micd convert-checkpoint: error: {folder}: no such folder")
        return 2
    for name in (LAST, PREVIOUS, BEST):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            load_checkpoint(path)
            print(f"{path}: already in the current format")
            continue
        except CheckpointError as e:
            if e.torn:
                print(f"{path}: skipped, {e.reason}")
                continue
        state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user, see DESCRIPTION
        rng = state.get("rng", {})
        if isinstance(rng.get("numpy"), tuple):  # np.random.get_state()'s legacy tuple holds an ndarray
            np.random.set_state(rng["numpy"])
            rng["numpy"] = numpy_global_state()
        backup = os.path.join(folder, "before-convert")
        os.makedirs(backup, exist_ok=True)
        os.replace(path, os.path.join(backup, name))
        save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, path)
        try:
            load_checkpoint(path)
        except CheckpointError as e:  # it holds more than this micd ever wrote: put the original back
            os.replace(os.path.join(backup, name), path)
            print(f"micd convert-checkpoint: error: {path}: cannot be converted ({e.reason})")
            return 1
        print(f"{path}: converted (the original is in {backup})")
    return 0
