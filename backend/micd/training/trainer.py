"""The one training loop shared by every method: data → method.step → optimizer → EMA → events/checkpoints.

Exit codes: 0 success, 2 bad data or options (an `error` event of kind `data`), 3 cancelled by SIGTERM/SIGINT
(after saving a checkpoint), 1 anything else (kind `oom`, `cuda` or `internal`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from micd import __version__
from micd.data.label_channels import LabelChannels
from micd.diskfull import DiskFull, free_bytes, is_disk_full
from micd.events import EventWriter, error_summary
from micd.atomicfile import write_json
from micd.methods import build_method
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig
from micd.training import distributed as D
from micd.training.checkpoint import (BEST, LAST, CheckpointError, load_checkpoint, load_latest, numpy_global_state,
                                      save_checkpoint, set_numpy_global_state)
from micd.training.devices import (DeviceError, amp_dtype, free_device_bytes, is_cuda_error, is_oom,
                                   precision_reason, resolve_device)
from micd.training.options import TrainOptions, changed_on_resume
from micd.training.outcome import (CONFIG_FILE, EXIT_CANCELLED, EXIT_DATA, EXIT_FAILED, EXIT_OK, KIND_EXIT,  # noqa: F401
                                   MAX_OOM_RETRIES, Cancelled, DataProblem)
from micd.training.schedule import consistency_weight, learning_rate
from micd.training.signals import CancelFlag
from micd.training.validation import validate
from micd.training.warm_start import WarmStartError, check_parent
from micd.training.warm_start import apply as apply_parent

@dataclass
class RunData:
    plan: object
    labels: Dict[int, str]
    labeled: list
    unlabeled: list
    validation: list
    notes: List[str]
    spec_counts: Dict[str, int]

    @property
    def channels(self) -> LabelChannels:
        """Output channel per label value; the cached label maps hold channel indices (data/label_channels.py)."""
        return LabelChannels.for_labels(self.labels)


MAX_NONFINITE_STEPS = 20


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, opts: TrainOptions):
        self.o = opts
        self.run_dir = os.path.abspath(opts.out)
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.cancel = CancelFlag()
        self.events: Optional[EventWriter] = None
        self.ctx = D.DistContext()
        self.bar = None
        # --time-budget counts from here; `micd train` moves it back to the process start (start-up included)
        self.process_t0 = time.time()

    # ------------------------------------------------------------------ entry point
    def run(self) -> int:
        self.cancel.install()
        try:
            self.device = resolve_device(self.o.device)
            self.ctx = D.init_distributed(self.device)
            self.device = D.cuda_device_for(self.ctx, self.device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            self._open_events()
            D.record_rank(self.run_dir, self.ctx)
            if self.o.num_threads > 0:
                torch.set_num_threads(self.o.num_threads)
            self._setup()
            self._loop()
            self._finish()
            return EXIT_OK
        except DataProblem as e:
            self._emit_error(getattr(e, "kind", "data"), str(e), e.hint or "fix the files listed and start again",
                             problems=e.problems)
            return EXIT_DATA
        except WarmStartError as e:
            self._emit_error("data", str(e), e.hint, problems=[{"file": self.o.init_from, "reason": str(e)}])
            return EXIT_DATA
        except DeviceError as e:
            self._emit_error("cuda", str(e), "use --device cpu, or install a CUDA build of torch", exit_code=EXIT_DATA)
            return EXIT_DATA
        except CheckpointError as e:
            self._emit_error("data", str(e), e.hint, problems=[{"file": e.path, "reason": e.reason}])
            return EXIT_DATA
        except DiskFull as e:
            return self._disk_full(e)
        except Cancelled:
            return EXIT_CANCELLED
        except KeyboardInterrupt:
            self._emit_error("cancelled", "interrupted twice; stopped without a final checkpoint",
                             "resume from the last checkpoint with --resume")
            return EXIT_CANCELLED
        except Exception as e:  # noqa: BLE001 - every failure must end in an event
            if is_disk_full(e):  # raised outside a disk_guard (cache, config): the file may be unnamed
                path = getattr(e, "filename", None) or self.run_dir
                return self._disk_full(DiskFull(path, free_bytes(path)))
            traceback.print_exc(file=sys.stderr)
            if is_oom(e):
                self._emit_error("oom", f"out of memory: {e}".splitlines()[0],
                                 "use a smaller --patch-size, fewer --filters or a smaller batch")
            elif is_cuda_error(e):
                self._emit_error("cuda", str(e).splitlines()[0], "check the GPU and driver, or use --device cpu")
            else:
                self._emit_error("internal", f"{type(e).__name__}: {e}".splitlines()[0][:500],
                                 "this is a bug; the traceback is on stderr")
            return EXIT_FAILED
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.events is not None:
                self.events.close()
            self.cancel.restore()
            D.shutdown(self.ctx)

    def _disk_full(self, e: DiskFull) -> int:
        self._emit_error("disk", str(e), "free space on that disk, then continue with the same command and --resume "
                         "(the last good checkpoint is kept)", path=e.path, free_bytes=e.free_bytes)
        return EXIT_FAILED

    # ------------------------------------------------------------------ set-up
    def _open_events(self) -> None:
        o = self.o
        # A run's traces; model/ or config.json alone (a run whose logs were cleaned up, or a config kept beside it)
        # count too, as the end of a run would replace the one and its start rewrite the other.
        existing = any(os.path.exists(os.path.join(self.run_dir, n)) for n in ("events.jsonl", "model", CONFIG_FILE)) \
            or os.path.isdir(self.ckpt_dir)
        D.barrier(self.ctx)  # every rank looks before rank 0 creates anything
        if existing and not o.resume:
            # Write nothing into a folder holding someone's run.
            self.events = EventWriter(None, sys.stdout if o.progress != "none" else None, enabled=self.ctx.is_main)
            raise DataProblem(f"{self.run_dir} already holds a training run",
                              [{"file": self.run_dir, "reason": "run folder is not empty"}],
                              "pass --resume to continue it, or choose another --out")
        on_event = None
        if o.progress == "bar" and self.ctx.is_main:
            from tqdm import tqdm
            self.bar = tqdm(total=o.iterations, unit="it", dynamic_ncols=True, file=sys.stderr)
            on_event = self._bar_update
        self.events = EventWriter(os.path.join(self.run_dir, "events.jsonl"),
                                  sys.stdout if o.progress == "jsonl" else None, enabled=self.ctx.is_main,
                                  on_event=on_event)

    def _bar_update(self, e: dict) -> None:
        if e["event"] == "iteration":
            self.bar.n = e["iter"]
            self.bar.set_postfix(loss=f"{e['loss'].get('total', 0):.3f}", refresh=False)
            self.bar.refresh()
        elif e["event"] == "validation":
            self.bar.write(f"validation @ {e['iter']}: mean Dice {e['mean_dice']:.3f}")
        elif e["event"] in ("warning", "error", "retry", "done"):
            self.bar.write(json.dumps({k: v for k, v in e.items() if k not in ("time", "schema")}))

    def _emit(self, event: str, **fields) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)

    def _emit_error(self, kind: str, message: str, hint: str, **fields) -> None:
        fields.setdefault("exit_code", KIND_EXIT.get(kind, EXIT_FAILED))
        if self.events is None:
            self.events = EventWriter(None, sys.stdout)
        if self.ctx.enabled:
            fields.setdefault("rank", self.ctx.rank)
            fields.setdefault("world_size", self.ctx.world_size)
            if not self.ctx.is_main:
                if kind == "cancelled":
                    return  # rank 0 reports the cancellation once
                # A failing rank reports itself: rank 0 may be gone or blocked in a collective.
                w = EventWriter(os.path.join(self.run_dir, "events.jsonl"), None)
                w.error(kind, message, hint, **fields)
                w.close()
                return
            if kind in ("internal", "cuda") and D.is_peer_failure(message):
                dead = D.dead_local_ranks(self.run_dir, self.ctx)
                fields["failed_ranks"] = dead
                message = (f"rank {', '.join(map(str, dead))} stopped; " if dead else "another rank stopped; ") + message
                hint = "see that rank's error (torchrun's output); continue from the last checkpoint with --resume"
        self.events.error(kind, message, hint, **fields)
        if self.o.progress == "none":  # "nothing on stdout" must not mean a silent exit: the error goes to stderr
            sys.stderr.write(error_summary(kind, message, hint, fields.get("problems")) + "\n")

    def _setup(self) -> None:
        o = self.o
        self.resume_state = None
        if o.resume:  # last.pt, or previous.pt when last.pt is torn
            self.resume_state = load_latest(self.ckpt_dir, lambda m, f: self._emit("warning", message=m, file=f))
            changed = changed_on_resume((self.resume_state or {}).get("options", {}), o)
            if changed:
                self._emit("warning", message="resumed with options that differ from the checkpoint's ("
                           + "; ".join(changed) + "): what the checkpoint holds for them (weights, optimizer, class-"
                           "weight statistics) carries on, state it lacks starts as in a new run", file="")
        _seed_everything(o.seed)
        # --init-from: the parent model and its network are checked before any data is prepared (warm_start.py)
        self.parent, self.parent_info = check_parent(o, self.resume_state is not None,
                                                     (self.resume_state or {}).get("parent_model"))
        self.data = self._prepare_data()
        if self.ctx.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            write_json(os.path.join(self.run_dir, CONFIG_FILE), o.to_dict())
        self._check_cancel(before_training=True)
        self._build_model()
        from micd.training.budget import apply_time_budget
        apply_time_budget(self)  # --time-budget: calibrate and fix the iteration count (micd/training/budget.py)

    def _prepare_data(self) -> RunData:
        from micd.data.cache import make_plan, prepare_cases
        from micd.data.dataset import DatasetError, load_dataset_spec, split_validation
        from micd.data.preprocess import PreprocessPlan
        from micd.data.validate import validate_dataset

        o = self.o
        if not o.dataset:
            raise DataProblem("no --dataset given", [], "pass --dataset FILE.json or an MSD folder")
        try:
            spec = load_dataset_spec(o.dataset)
        except DatasetError as e:
            raise DataProblem(f"dataset {o.dataset} is not usable", [p.__dict__ for p in e.problems]) from None
        report = validate_dataset(spec)
        for w in report.warnings:
            self._emit("warning", message=w.reason, file=w.file)
        if not report.ok:
            raise DataProblem(f"{len(report.problems)} problem(s) in the dataset", [p.__dict__ for p in report.problems])
        notes: List[str] = list(spec.notes)
        if o.val_fraction > 0 or spec.validation:
            spec, note = split_validation(spec, o.seed, o.val_fraction, max_cases=20)
        else:
            note = "validation: none (--val-fraction 0); the model keeps the weights of the last iteration"
        notes.append(note)
        if self.resume_state is not None:
            plan = PreprocessPlan.from_dict(self.resume_state["plan"])
        else:
            overrides = {}
            if o.target_spacing:
                overrides["target_spacing"] = tuple(o.target_spacing)
            if o.modality != "auto":
                overrides["modality"] = o.modality
            if o.ct_window:
                overrides["ct_window"] = tuple(o.ct_window)
            plan, plan_notes = make_plan(spec, overrides)
            notes += list(plan_notes)
        cache = o.cache_dir or os.path.join(self.run_dir, "cache")
        labels = dict(spec.labels)
        def prepare_all() -> dict:
            return {name: prepare_cases(cases, plan, cache, labels) for name, cases in
                    (("labeled", spec.labeled), ("validation", spec.validation), ("unlabeled", spec.unlabeled))}

        # Rank 0 preprocesses; the other ranks wait, then read the finished cache.
        groups = prepare_all() if self.ctx.is_main else {}
        D.barrier(self.ctx)
        if not self.ctx.is_main:
            groups = prepare_all()
        if not groups["unlabeled"]:
            notes.append("no unlabeled cases: the labeled images also serve as unlabeled input")
        counts = {"labeled": len(groups["labeled"]), "unlabeled": len(groups["unlabeled"]),
                  "validation": len(groups["validation"])}
        return RunData(plan, labels, groups["labeled"], groups["unlabeled"] or groups["labeled"],
                       groups["validation"], notes, counts)

    def _plan_patch(self) -> List[int]:
        from micd.data.planning import plan_patch_size

        if self.resume_state is not None:
            return list(self.resume_state["patch_size"])
        divs = NetworkConfig(strides=self.strides).divisors  # (16, 16, 16), or e.g. (4, 16, 16) for thick slices
        if self.o.patch_size:
            p = [int(v) for v in self.o.patch_size]
            if any(v % k for v, k in zip(p, divs)):
                need = "16" if set(divs) == {16} else " ".join(map(str, divs)) + " along z y x"
                raise DataProblem(f"--patch-size {' '.join(map(str, p))}: every size must be a multiple of {need} "
                                  "(the VNet downsamples four times)", [])
            self.patch_note = "given by --patch-size"
            return p
        shapes = np.array([np.asarray(c.image.shape) for c in self.data.labeled])
        patch, note = plan_patch_size(tuple(int(v) for v in np.median(shapes, 0)), free_device_bytes(self.device),
                                      self.o.filters, self.o.batch_labeled + self.o.batch_unlabeled,
                                      divisor=divs, n_classes=self.data.channels.count,
                                      bytes_per_value=2 if amp_dtype(self.o.amp, self.device) else 4)
        self.patch_note = note
        return list(patch)

    def _build_model(self) -> None:
        o = self.o
        self.patch_note = "restored from the checkpoint"
        from micd.data.planning import network_strides
        self.strides = network_strides(self)  # thick slices: no early downsampling along them (data/planning.py)
        self.patch = self._plan_patch()
        n_classes = self.data.channels.count
        self.net_config = NetworkConfig(out_channels=n_classes, filters=o.filters, dropout=o.dropout,
                                        normalization=o.normalization, strides=self.strides)
        if self.resume_state is not None:
            self.net_config = NetworkConfig.from_dict(self.resume_state["network"])
            if self.net_config.out_channels != n_classes:
                raise DataProblem(f"the checkpoint's network has {self.net_config.out_channels} outputs, this micd "
                                  f"trains {n_classes} for these labels (one per label, sparse values packed)", [],
                                  "a run started by an older micd cannot be resumed here: start a new run "
                                  "(--init-from does not help either, the output layer differs)")
        self.method = build_method(o.method, self.net_config, n_classes, o.method_config())
        if self.parent is not None:  # --init-from: labels checked, weights copied (training/warm_start.py)
            self.data.notes += apply_parent(self.method, self.parent, self.data.labels, self.data.plan)
            self.parent = None
        if o.sync_bn and self.ctx.enabled:
            if self.device.type != "cuda":
                raise DataProblem("--sync-bn needs CUDA devices (torch's SyncBatchNorm)", [],
                                  "drop --sync-bn on CPU (BatchNorm statistics are then per rank), or use "
                                  "--normalization instancenorm, which does not depend on the batch split")
            D.convert_sync_bn_inplace(self.method.students)
        self.method.to(self.device)
        counts = np.zeros(n_classes, np.float64)
        for c in self.data.labeled:
            counts += np.bincount(np.asarray(c.label).reshape(-1), minlength=n_classes)[:n_classes]
        self.method.init_from_label_counts(counts)
        self.optimizer = torch.optim.SGD(self.method.students.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=o.momentum > 0, weight_decay=o.weight_decay)
        self.amp = amp_dtype(o.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16 and self.device.type == "cuda")
        self.mask_gen = torch.Generator().manual_seed(o.seed + 1)
        # Labeled and unlabeled patches come from generators of their own, so every method (whatever it draws for
        # unlabeled patches, or not) sees the same labeled patch sequence for a seed.
        self.sample_rng = np.random.default_rng(o.seed)
        self.unlabeled_rng = np.random.default_rng([o.seed, 1])
        self.start_iter = 0
        self.best = {"mean_dice": -1.0, "iter": 0}
        if self.resume_state is not None:
            self._restore(self.resume_state)
        # Teachers and class weights start identical on every rank; DDP broadcasts rank 0's students.
        self.method.prepare(D.make_wrapper(self.ctx, self.device, False), D.sum_across_ranks(self.ctx),
                            (self.ctx.rank, self.ctx.world_size))
        self._make_samplers()

    def _make_samplers(self) -> None:
        from micd.data.sampling import PatchSampler

        self.lab_sampler = PatchSampler(self.data.labeled, tuple(self.patch), self.sample_rng,
                                        foreground_fraction=self.o.foreground_fraction)
        self.unl_sampler = PatchSampler(self.data.unlabeled, tuple(self.patch), self.unlabeled_rng,
                                        foreground_fraction=0.0)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, it: int) -> dict:
        return {
            "iteration": it, "method": self.o.method, "network": self.net_config.to_dict(),
            "plan": self.data.plan.to_dict(), "patch_size": list(self.patch),
            "model": self.method.state_dict(), "method_extra": self.method.extra_state(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "mask": self.mask_gen.get_state(),
                    "sampler": self.sample_rng.bit_generator.state,
                    "sampler_unlabeled": self.unlabeled_rng.bit_generator.state, "python": random.getstate(),
                    "numpy": numpy_global_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "best": dict(self.best), "world_size": self.ctx.world_size, "options": self.o.to_dict(),
            "parent_model": getattr(self, "parent_info", None),
            "wall_s": getattr(self, "wall_before", 0.0) + (time.time() - self.t0 if hasattr(self, "t0") else 0.0),
            "cpu_s": getattr(self, "cpu_before", 0.0) + (time.process_time() - self.cpu0 if hasattr(self, "cpu0")
                                                          else 0.0),
            "version": __version__,
        }

    def _restore(self, s: dict) -> None:
        if s["method"] != self.o.method:
            raise DataProblem(f"the run in {self.run_dir} was trained with --method {s['method']}, not "
                              f"{self.o.method}", [], "resume with the same --method")
        self.method.load_state_dict(s["model"])
        self.method.load_extra_state(s["method_extra"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scaler.load_state_dict(s["scaler"])
        r = s["rng"]
        torch.set_rng_state(r["torch"])
        self.mask_gen.set_state(r["mask"])
        self.sample_rng.bit_generator.state = r["sampler"]
        if "sampler_unlabeled" in r:
            self.unlabeled_rng.bit_generator.state = r["sampler_unlabeled"]
        random.setstate(r["python"])
        set_numpy_global_state(r["numpy"])
        if r.get("cuda") is not None and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(r["cuda"])
            except RuntimeError:
                pass  # a different GPU count: CUDA streams re-seed, CPU-side state is what makes data repeat
        self.start_iter = int(s["iteration"])
        self.best = dict(s["best"])

    def _save_last(self, it: int) -> None:
        if self.ctx.is_main:
            path = save_checkpoint(self._state(it), os.path.join(self.ckpt_dir, LAST), keep_previous=True)
            self._emit("checkpoint", path=path, iter=it, kind="last")
        D.barrier(self.ctx)

    def _save_best(self, it: int, metrics: dict) -> None:
        nets = {k: v.state_dict() for k, v in self.method.export_networks().items()}
        path = save_checkpoint({"iteration": it, "networks": nets, "metrics": metrics},
                               os.path.join(self.ckpt_dir, BEST))
        self._emit("checkpoint", path=path, iter=it, kind="best")

    # ------------------------------------------------------------------ loop
    def _batch(self):
        o = self.o
        x_l, y_l = self.lab_sampler.sample(o.batch_labeled)
        x_u = None
        if self.method.uses_unlabeled:
            x_u, _ = self.unl_sampler.sample(o.batch_unlabeled)
        if self.ctx.enabled:  # every rank drew the global batch; keep this rank's share
            x_l, y_l = x_l[self.ctx.slice(o.batch_labeled)], y_l[self.ctx.slice(o.batch_labeled)]
            if x_u is not None:
                x_u = x_u[self.ctx.slice(o.batch_unlabeled)]
        to = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dt, non_blocking=True)
        return to(x_l, torch.float32), to(y_l, torch.long), (None if x_u is None else to(x_u, torch.float32))

    def _validate_every(self) -> int:
        return self.o.validate_every if self.o.validate_every > 0 else max(1, self.o.iterations // 10)

    def _start_event(self) -> None:
        o, d = self.o, self.data
        if o.batch_labeled % self.ctx.world_size or (self.method.uses_unlabeled and
                                                     o.batch_unlabeled % self.ctx.world_size):
            raise DataProblem(f"the global batch ({o.batch_labeled} labeled + {o.batch_unlabeled} unlabeled) must "
                              f"divide by the {self.ctx.world_size} ranks", [], "change --batch-labeled/--batch-unlabeled")
        from micd.data.planning import estimate_training_bytes

        need = estimate_training_bytes(tuple(self.patch), self.net_config.filters, o.batch_labeled + o.batch_unlabeled,
                                       self.net_config.out_channels, 2 if self.amp else 4)
        free = free_device_bytes(self.device)
        if free is not None and need > free:
            self._emit("warning", message=f"the patch {self.patch} with batch {o.batch_labeled}+{o.batch_unlabeled} "
                       f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free on {self.device}; "
                       "expect an out-of-memory retry with a smaller patch", file="")
        self._emit("start", method=o.method, device=str(self.device), labeled=d.spec_counts["labeled"],
                   unlabeled=d.spec_counts["unlabeled"], validation=d.spec_counts["validation"],
                   iterations=o.iterations, start_iter=self.start_iter, resumed=self.start_iter > 0 or o.resume,
                   patch_size=list(self.patch), patch_plan=self.patch_note,
                   memory_estimate_gib=round(need / 2 ** 30, 2),
                   free_memory_gib=None if free is None else round(free / 2 ** 30, 2),
                   batch_size={"labeled": o.batch_labeled, "unlabeled": o.batch_unlabeled},
                   world_size=self.ctx.world_size, ranks=self.ctx.world_size, threads=torch.get_num_threads(),
                   amp=str(self.amp).replace("torch.", "") if self.amp else "off",
                   **dict(zip(("precision", "precision_reason"), precision_reason(o.amp, self.device))),
                   **getattr(self, "budget_fields", {}),
                   spacing=list(d.plan.target_spacing), modality=d.plan.modality, labels=d.labels,
                   notes=d.notes, parent_model=self.parent_info, run_dir=self.run_dir, version=__version__)

    def _loop(self) -> None:
        o = self.o
        self._start_event()
        self.t0 = time.time()
        self.cpu0 = time.process_time()
        # Time spent before a resume, so that provenance reports the whole run's training time.
        self.wall_before = float((self.resume_state or {}).get("wall_s", 0.0))
        self.cpu_before = float((self.resume_state or {}).get("cpu_s", 0.0))
        self.resume_state = None
        it = self.start_iter
        recent: List[float] = []
        oom_retries = 0
        for s in self.method.students.values():
            s.train()
        while it < o.iterations:
            t_it = time.time()
            lr = learning_rate(o.lr_schedule, o.lr, it, o.iterations, o.poly_power)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            beta = consistency_weight(it, o.iterations, o.beta_max, o.rampup_fraction, o.warmup_fraction)
            try:
                losses = self._train_step(beta)
            except RuntimeError as e:
                if self.device.type == "cuda" and is_oom(e) and oom_retries < MAX_OOM_RETRIES:
                    oom_retries += 1
                    self._shrink_after_oom()
                    continue
                raise
            it += 1
            recent.append(time.time() - t_it)
            recent = recent[-20:]
            if it % o.log_every == 0 or it == o.iterations or it == self.start_iter + 1:
                spi = float(np.mean(recent))
                self._emit("iteration", iter=it, total=o.iterations, loss=losses, lr=lr, beta=beta,
                           sec_per_iter=round(spi, 4), eta_s=round(spi * (o.iterations - it), 1))
            if self.data.validation and (it % self._validate_every() == 0 or it == o.iterations):
                self._run_validation(it)
            if it % o.checkpoint_every == 0 and it < o.iterations:
                self._save_last(it)
            self._check_cancel(it=it)
        self.final_iter = it

    def _train_step(self, beta: float) -> Dict[str, float]:
        """One optimizer step; a non-finite loss skips the step (as DHC's GradScaler does) with a warning event,
        and only MAX_NONFINITE_STEPS skipped in a row end the run."""
        x_l, y_l, x_u = self._batch()
        before = self.method.snapshot()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            terms = self.method.step(x_l, y_l, x_u, beta, self.mask_gen)
        self.optimizer.zero_grad(set_to_none=True)
        # Averaged over ranks before the backward pass, so that every rank skips the same steps.
        values = D.mean_across_ranks(self.ctx, {k: float(v.detach()) for k, v in terms.items()})
        if not np.isfinite(values["total"]):
            return self._skip_step(before, values, "non-finite loss")
        self.scaler.scale(terms["total"]).backward()
        if not self.scaler.is_enabled() and not self._gradients_finite():
            # GradScaler skips such steps by itself (fp16 on CUDA); without it (fp32, bf16) skip them here.
            return self._skip_step(before, values, "non-finite gradients")
        self.nonfinite_in_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step()
        return values

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.method.students.parameters() if p.grad is not None]
        # One flag per tensor (torch._foreach_norm overflowed to inf on finite bf16-autocast gradients here).
        return all(bool(torch.isfinite(g).all()) for g in grads)

    def _skip_step(self, before: dict, values: Dict[str, float], what: str) -> Dict[str, float]:
        """Leave the students, the class-weight and the BatchNorm statistics as they were before this step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.method.restore(before)
        self.nonfinite_in_row = getattr(self, "nonfinite_in_row", 0) + 1
        if self.nonfinite_in_row >= MAX_NONFINITE_STEPS:
            raise FloatingPointError(f"{what} for {self.nonfinite_in_row} steps in a row ({values}); lower --lr "
                                     "or --beta-max, or try --amp off")
        self._emit("warning", message=f"{what} ({values}); step skipped", file="")
        return values

    def _shrink_after_oom(self) -> None:
        torch.cuda.empty_cache()
        self.optimizer.zero_grad(set_to_none=True)
        p = list(self.patch)
        axis = int(np.argmax(p))
        if p[axis] > 16:
            p[axis] = max(16, (int(p[axis] * 0.75) // 16) * 16)
            self.patch = p
            self._make_samplers()
        elif self.o.batch_unlabeled > self.ctx.world_size:
            self.o.batch_unlabeled //= 2
        self._emit("retry", reason="CUDA out of memory", patch_size=list(self.patch),
                   batch_size={"labeled": self.o.batch_labeled, "unlabeled": self.o.batch_unlabeled})

    def _recalibrate_bn(self, it: int) -> None:
        """--bn-recalibrate N: precise BatchNorm statistics for what is validated and exported (bn_statistics.py),
        from a generator of their own, so the training streams are untouched. Every rank does the same."""
        if self.o.bn_recalibrate <= 0:
            return
        from micd.training.bn_statistics import recalibrate, uniform_batches

        draw = uniform_batches(self.data.unlabeled, self.patch, self.o.batch_labeled + self.o.batch_unlabeled,
                               np.random.default_rng([self.o.seed, 2, it]))
        recalibrate(self.method.export_networks().values(), self.o.bn_recalibrate, draw, self.device)

    def _run_validation(self, it: int) -> None:
        self._recalibrate_bn(it)
        self.final_validated = it
        if self.ctx.is_main:
            res = validate(self.method.inference_networks(), self.data.validation,
                           self.data.channels.names(self.data.labels), self.patch,
                           self.device)
            self._emit("validation", iter=it, **res)
            if res["mean_dice"] > self.best["mean_dice"]:
                self.best = {"mean_dice": res["mean_dice"], "iter": it, "dice": res["dice"]}
                self._save_best(it, res)
        D.barrier(self.ctx)

    def _check_cancel(self, it: Optional[int] = None, before_training: bool = False) -> None:
        # All ranks must stop at the same iteration, or one would wait forever in the next all-reduce.
        if not D.any_rank(self.ctx, self.cancel.requested):
            return
        path = None
        if not before_training and it is not None:
            if self.ctx.is_main:
                path = save_checkpoint(self._state(it), os.path.join(self.ckpt_dir, LAST), keep_previous=True)
                self._emit("checkpoint", path=path, iter=it, kind="last")
        self._emit_error("cancelled", f"stopped by {self.cancel.name}" + (f" at iteration {it}" if it else
                         " before training started"),
                         "continue with the same command and --resume" if path else "start the run again",
                         checkpoint=path, iter=it)
        raise Cancelled()

    def _model_meta(self, it: int, final_state: dict, nets: dict, source: str) -> dict:
        labels = {str(k): v for k, v in sorted(self.data.labels.items())}
        return {
            "name": os.path.basename(self.run_dir),
            "labels": labels, "channels": list(self.data.channels.values),
            "network": self.net_config.to_dict(), "method": self.o.method,
            "method_options": self.o.method_config().to_dict(),
            "preprocessing": self.data.plan.to_dict(), "patch_size": list(self.patch),
            "default_ensemble": [k for k in nets if k.startswith("student")],
            "weights_from": source,
            "metrics": {"best_mean_dice": self.best["mean_dice"] if self.best["mean_dice"] >= 0 else None,
                        "best_iter": self.best.get("iter"), "dice": self.best.get("dice", {}),
                        # DiffDW/DistDW at the end of training (DHC, MICD), to see what the weighting did
                        "final_class_weights": getattr(self.method, "current_weights", None)},
            "provenance": {
                "dataset": os.path.abspath(self.o.dataset), "counts": self.data.spec_counts,
                "seed": self.o.seed, "iterations": it, "device": str(self.device),
                "world_size": self.ctx.world_size,
                "wall_s": round(final_state["wall_s"], 1), "cpu_s": round(final_state["cpu_s"], 1),
                "micd_version": __version__, "torch_version": torch.__version__,
                "python": platform.python_version(), "host": platform.node(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "parent_model": getattr(self, "parent_info", None),  # --init-from
            },
        }

    # ------------------------------------------------------------------ result
    def _finish(self) -> None:
        it = self.final_iter
        if getattr(self, "final_validated", None) != it:
            self._recalibrate_bn(it)  # (a validation at the last iteration has just done it)
        D.record_state_digest(self.run_dir, self.ctx, self.method)
        if not self.ctx.is_main:
            D.barrier(self.ctx)
            return
        final_state = self._state(it)
        save_checkpoint(final_state, os.path.join(self.ckpt_dir, LAST), keep_previous=True)
        self._emit("checkpoint", path=os.path.join(self.ckpt_dir, LAST), iter=it, kind="last")
        nets = self.method.export_networks()
        source = "last"
        best_path = os.path.join(self.ckpt_dir, BEST)
        use_best = bool(self.data.validation) and os.path.isfile(best_path)
        if use_best and self.o.export_last:
            save_model_package(os.path.join(self.run_dir, "model-last"),
                               self._model_meta(it, final_state, nets, "last"), nets)
        if use_best:
            best = load_checkpoint(best_path)
            for k, v in nets.items():
                v.load_state_dict(best["networks"][k])
            source = f"best validation (iteration {best['iteration']})"
        model_dir = os.path.join(self.run_dir, "model")
        meta = self._model_meta(it, final_state, nets, source)
        save_model_package(model_dir, meta, nets)
        self._emit("done", model=model_dir, best_mean_dice=meta["metrics"]["best_mean_dice"], iter=it,
                   wall_s=meta["provenance"]["wall_s"])
        D.barrier(self.ctx)
