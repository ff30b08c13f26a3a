"""One `micd train` invocation: set up (device, ranks, events, data), plan, train, export, and end every failure in
one `error` event with its exit code.

    options ─▶ RunContext ─▶ RunData ─▶ planner.plan_training ─▶ TrainingPlan (plan.json) ─▶ Trainer ─▶ model/

Exit codes (micd.contract): 0 success, 2 bad data or options (an `error` event of kind `data` or `budget`),
3 cancelled by SIGTERM/SIGINT or the stop file (after saving a checkpoint), 1 anything else (kind `oom`, `cuda`,
`disk` or `internal`).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from typing import Optional

import torch

from micd.allocator import keep_freed_memory
from micd.atomicfile import write_json
from micd.contract import CONFIG_FILE, EVENTS_FILE, MODEL_DIR
from micd.diskfull import DiskFull, disk_full_error, free_bytes, is_disk_full
from micd.events import EventWriter
from micd.training import distributed as D
from micd.training.checkpoint import CheckpointError, load_latest
from micd.training.devices import DeviceError, is_cuda_error, is_oom, resolve_device
from micd.training.options import TrainOptions, changed_on_resume
from micd.training.outcome import EXIT_CANCELLED, EXIT_DATA, EXIT_FAILED, EXIT_OK, Cancelled, DataProblem
from micd.training.plan import TrainingPlan, read_plan, write_plan
from micd.training.planner import plan_training
from micd.training.run_context import RunContext
from micd.training.run_data import prepare_run_data
from micd.training.trainer import Trainer, seed_everything
from micd.training.warm_start import WarmStartError, check_parent


class TrainingSession:
    def __init__(self, opts: TrainOptions, process_t0: Optional[float] = None):
        """`process_t0`: when the user's command started (--time-budget counts from then; default: now)."""
        self.opts = opts
        self.process_t0 = time.time() if process_t0 is None else process_t0
        self.run = RunContext(opts)
        self.bar = None

    def run_to_end(self) -> int:
        """Train and export; the exit code. Every way this ends is reported in the event stream."""
        run = self.run
        run.cancel.install()
        try:
            run.device = resolve_device(self.opts.device)
            run.dist = D.init_distributed(run.device)
            run.device = D.cuda_device_for(run.dist, run.device)
            if run.device.type == "cuda":
                torch.cuda.set_device(run.device)
            self._open_events()
            D.record_rank(run.run_dir, run.dist)
            if self.opts.num_threads > 0:
                torch.set_num_threads(self.opts.num_threads)
            trainer = self._prepare()
            trainer.train()
            trainer.finish()
            return EXIT_OK
        except DataProblem as e:
            run.emit_error(e.kind, str(e), e.hint or "fix the files listed and start again", problems=e.problems)
            return EXIT_DATA
        except WarmStartError as e:
            run.emit_error("data", str(e), e.hint, problems=[{"file": self.opts.init_from, "reason": str(e)}])
            return EXIT_DATA
        except DeviceError as e:
            run.emit_error("cuda", str(e), "use --device cpu, or install a CUDA build of torch", exit_code=EXIT_DATA)
            return EXIT_DATA
        except CheckpointError as e:
            run.emit_error("data", str(e), e.hint, problems=[{"file": e.path, "reason": e.reason}])
            return EXIT_DATA
        except DiskFull as e:
            return self._disk_full(e)
        except Cancelled:
            return EXIT_CANCELLED
        except KeyboardInterrupt:
            run.emit_error("cancelled", "interrupted twice; stopped without a final checkpoint",
                           "resume from the last checkpoint with --resume")
            return EXIT_CANCELLED
        except Exception as e:  # noqa: BLE001 - every failure must end in an event
            if is_disk_full(e):  # raised outside a disk_guard (a torch writer, the cache, config): maybe unnamed
                path = getattr(disk_full_error(e), "filename", None) or run.run_dir
                return self._disk_full(DiskFull(path, free_bytes(path)))
            traceback.print_exc(file=sys.stderr)
            if is_oom(e):
                run.emit_error("oom", f"out of memory: {e}".splitlines()[0],
                               "use a smaller --patch-size, fewer --filters or a smaller batch")
            elif is_cuda_error(e):
                run.emit_error("cuda", str(e).splitlines()[0], "check the GPU and driver, or use --device cpu")
            else:
                run.emit_error("internal", f"{type(e).__name__}: {e}".splitlines()[0][:500],
                               "this is a bug; the traceback is on stderr")
            return EXIT_FAILED
        finally:
            if self.bar is not None:
                self.bar.close()
            if run.events is not None:
                run.events.close()
            run.cancel.restore()
            D.shutdown(run.dist)

    def _disk_full(self, e: DiskFull) -> int:
        self.run.emit_error("disk", str(e), "free space on that disk, then continue with the same command and "
                            "--resume (the last good checkpoint is kept)", path=e.path, free_bytes=e.free_bytes)
        return EXIT_FAILED

    # ------------------------------------------------------------------ set-up
    def _open_events(self) -> None:
        run, o = self.run, self.opts
        # A run's traces; model/ or config.json alone (a run whose logs were cleaned up, or a config kept beside it)
        # count too, as the end of a run would replace the one and its start rewrite the other.
        existing = any(os.path.exists(os.path.join(run.run_dir, n)) for n in (EVENTS_FILE, MODEL_DIR, CONFIG_FILE)) \
            or os.path.isdir(run.ckpt_dir)
        D.barrier(run.dist)  # every rank looks before rank 0 creates anything
        if existing and not o.resume:
            # Write nothing into a folder holding someone's run.
            run.events = EventWriter(None, sys.stdout if o.progress != "none" else None, enabled=run.dist.is_main)
            raise DataProblem(f"{run.run_dir} already holds a training run",
                              [{"file": run.run_dir, "reason": "run folder is not empty"}],
                              "pass --resume to continue it, or choose another --out")
        on_event = self._bar_update if o.progress == "bar" and run.dist.is_main else None
        run.events = EventWriter(run.events_path, sys.stdout if o.progress == "jsonl" else None,
                                 enabled=run.dist.is_main, on_event=on_event)

    def _bar_update(self, e: dict) -> None:
        """--progress bar: a tqdm bar on stderr, opened when the plan says how many iterations there are."""
        if e["event"] == "start" and self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=e["iterations"], initial=e.get("start_iter", 0), unit="it", dynamic_ncols=True,
                            file=sys.stderr)
        elif e["event"] == "iteration" and self.bar is not None:
            self.bar.n = e["iter"]
            self.bar.set_postfix(loss=f"{e['loss'].get('total', 0):.3f}", refresh=False)
            self.bar.refresh()
        elif e["event"] == "validation" and self.bar is not None:
            self.bar.write(f"validation @ {e['iter']}: mean Dice {e['mean_dice']:.3f}")
        elif e["event"] in ("warning", "error", "retry", "done"):
            text = json.dumps({k: v for k, v in e.items() if k not in ("time", "schema")})
            self.bar.write(text) if self.bar is not None else sys.stderr.write(text + "\n")

    def _prepare(self) -> Trainer:
        """Resume state, data, plan (written once to plan.json, the options to config.json), then the trainer."""
        run, o = self.run, self.opts
        resume_state = None
        if o.resume:  # last.pt, or previous.pt when last.pt is torn
            resume_state = load_latest(run.ckpt_dir, lambda m, f: run.warn(m, f))
            changed = changed_on_resume((resume_state or {}).get("options", {}), o)
            if changed:
                run.warn("resumed with options that differ from the checkpoint's (" + "; ".join(changed) + "): what "
                         "the checkpoint holds for them (weights, optimizer, class-weight statistics) carries on, "
                         "state it lacks starts as in a new run")
        seed_everything(o.seed)
        # --init-from: the parent model and its network are checked before any data is prepared (warm_start.py)
        parent, parent_info = check_parent(o, resume_state is not None, (resume_state or {}).get("parent_model"))
        data = prepare_run_data(o, run.run_dir, run.dist, (resume_state or {}).get("plan"), run.warn)
        if run.dist.is_main:
            os.makedirs(run.run_dir, exist_ok=True)
            write_json(os.path.join(run.run_dir, CONFIG_FILE), o.to_dict())
        run.check_cancel()

        def make_trainer(plan: TrainingPlan) -> Trainer:
            return Trainer(plan, run, data, None, parent, parent_info)

        stored = read_plan(run.run_dir) if resume_state is not None else None
        plan = plan_training(o, data, run.device, run.dist, resume_state, stored, parent, self.process_t0,
                             make_trainer)
        if plan.resample_to is not None:  # under a budget, a coarser grid rather than too small a field of view
            data = prepare_run_data(o, run.run_dir, run.dist, None, run.warn, planned_spacing=plan.resample_to,
                                    planned_note=plan.patch_note)
            run.check_cancel()
            plan = plan_training(o, data, run.device, run.dist, None, None, parent, self.process_t0, make_trainer,
                                 may_resample=False)
        self._release_planning_memory()
        if run.dist.is_main:
            write_plan(run.run_dir, plan)
        return Trainer(plan, run, data, resume_state, parent, parent_info)

    def _release_planning_memory(self) -> None:
        """The trainer that timed the steps is gone; give its memory back before the run's trainer is built."""
        gc.collect()
        if self.run.device.type == "cuda":
            torch.cuda.empty_cache()


def run_training(opts: TrainOptions, process_t0: Optional[float] = None) -> int:
    keep_freed_memory()  # the steps' buffers stay in the process (see micd.allocator)
    return TrainingSession(opts, process_t0).run_to_end()

