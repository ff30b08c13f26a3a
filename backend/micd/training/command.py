"""`micd train`: parse options (defaults < saved run config < --config < flags), then run the training session
(plan, then train: micd.training.session)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from micd.training.options import add_arguments, resolve

DESCRIPTION = """Train a segmentation model with MICD (default) or a peer method on labeled and unlabeled volumes.
Progress goes to stdout as JSON lines (schema: micd.events) and to RUN_DIR/events.jsonl. Exit codes: 0 done,
2 bad data or options, or the run folder in use by another trainer, 3 cancelled (SIGTERM/SIGINT; a checkpoint is
saved first), 1 other failure (also a full disk: free space, then --resume)."""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from micd.contract import CONFIG_FILE, EXIT_DATA
    from micd.events import EventWriter
    from micd.training.runlock import HOLDER_VARIABLE, RunFolderBusy, RunLock
    from micd.training.session import run_training

    saved = None
    out = getattr(args, "out", None)
    if getattr(args, "resume", False) and out and os.path.isfile(os.path.join(out, CONFIG_FILE)):
        try:
            with open(os.path.join(out, CONFIG_FILE), encoding="utf-8") as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            EventWriter(None, sys.stdout).error(
                "data", f"{os.path.join(out, CONFIG_FILE)}: the run's saved options cannot be read ({e})",
                "restore that file, or move it away and pass the run's options again with --resume")
            return EXIT_DATA
    try:
        opts = resolve(args, saved)
    except (ValueError, TypeError) as e:
        EventWriter(None, sys.stdout).error("data", str(e), "fix the option or the --config file")
        return EXIT_DATA
    if not opts.out:
        EventWriter(None, sys.stdout).error("data", "no --out RUN_DIR given", "pass --out RUN_DIR")
        return EXIT_DATA
    # One trainer per run folder; under torchrun rank 0 takes the lock, unless `--nproc` below holds it for the ranks.
    lock = RunLock(opts.out)
    try:
        if os.environ.get("RANK", "0") == "0" and HOLDER_VARIABLE not in os.environ:
            lock.acquire()
    except RunFolderBusy as e:
        EventWriter(None, sys.stdout).error("data", str(e), "wait for that run to end, or stop it (Cancel in Slicer, "
                                            "or end the process), then continue it with --resume")
        return EXIT_DATA
    from micd.training.budget import START_TIME_VARIABLE, command_start_time

    try:
        if opts.nproc and opts.nproc > 1 and "WORLD_SIZE" not in os.environ:
            from micd.training.distributed import launch_local
            os.environ.setdefault(START_TIME_VARIABLE, repr(command_start_time()))  # --time-budget counts from here
            argv = sys.argv[1:] if sys.argv[1:2] == ["train"] else ["train", *sys.argv[1:]]
            return launch_local(opts.nproc, argv, opts.out, lock.fd)
        return run_training(opts, command_start_time())
    finally:
        lock.release()
