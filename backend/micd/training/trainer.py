"""The one training loop shared by every method: data → method.step → optimizer → EMA → events/checkpoints.

The Trainer takes a frozen TrainingPlan (plan.py) and only runs it: it builds the networks, optimizer and samplers
the plan describes, trains for the plan's iterations with its validation and checkpoint cadence, and exports the
model. What it changes while running is its own state, never the plan: a CUDA out-of-memory retry continues on a
smaller patch (or unlabeled batch) and says so in a `retry` event. The planner (planner.py) times steps through the
small public interface it names `Calibratable`: `use_patch`, `time_steps`, `time_validation`, `time_checkpoint`,
`time_probe_pass`.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import random
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from micd import __version__
from micd.contract import MODEL_DIR
from micd.methods import build_method
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig
from micd.training import distributed as D
from micd.training.checkpoint import (BEST, LAST, load_checkpoint, numpy_global_state, save_checkpoint,
                                      set_numpy_global_state)
from micd.training.devices import is_oom
from micd.training.outcome import MAX_OOM_RETRIES, DataProblem
from micd.training.plan import TrainingPlan
from micd.training.run_context import RunContext
from micd.training.run_data import RunData
from micd.training.schedule import consistency_weight, in_warmup, learning_rate, warmup_steps
from micd.training.validation import validate
from micd.training.warm_start import apply as apply_parent

MAX_NONFINITE_STEPS = 20
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class StepPace:
    """Seconds per iteration of the last 20 steps of each kind (the warm-up's supervised steps and the full ones),
    and the ETA of the rest of the run from them; a kind not run yet takes the plan's calibrated time, or the other
    kind's recent one."""

    def __init__(self, supervised_s: Optional[float] = None, full_s: Optional[float] = None, window: int = 20):
        self.planned = {True: supervised_s, False: full_s}
        self.window = window
        self.times: Dict[bool, List[float]] = {True: [], False: []}

    @classmethod
    def for_plan(cls, plan: TrainingPlan) -> "StepPace":
        cal = (plan.budget.get("budget_plan") or {}).get("calibration") or {}
        return cls(cal.get("supervised_step_s"), cal.get("full_step_s"))

    def add(self, supervised: bool, seconds: float) -> None:
        kept = self.times[supervised]
        kept.append(seconds)
        del kept[:-self.window]

    def recent(self, supervised: bool) -> float:
        for source in (self.times[supervised], self.planned[supervised], self.times[not supervised]):
            if source:
                return float(np.mean(source))
        return 0.0

    def eta(self, supervised_left: int, left: int) -> float:
        return supervised_left * self.recent(True) + (left - supervised_left) * self.recent(False)


class Trainer:
    def __init__(self, plan: TrainingPlan, run: RunContext, data: RunData, resume_state: Optional[dict] = None,
                 parent=None, parent_info: Optional[dict] = None):
        """Build what `plan` describes, from the seed (so every trainer of a plan starts the same), and continue
        from `resume_state` (a checkpoint) when given; `parent`: the --init-from model whose weights start it."""
        o = self.o = run.opts
        self.plan, self.run, self.data, self.device, self.ctx = plan, run, data, run.device, run.dist
        self.parent_info = parent_info
        if plan.threads > 0:
            torch.set_num_threads(plan.threads)
        seed_everything(o.seed)
        self.net_config = NetworkConfig.from_dict(plan.network)
        n_classes = data.channels.count
        self.method = build_method(o.method, self.net_config, n_classes, o.method_config())
        # --init-from: labels checked, weights copied (training/warm_start.py)
        self.init_notes: List[str] = apply_parent(self.method, parent, data.labels, data.plan) if parent else []
        if o.sync_bn and self.ctx.enabled:
            if self.device.type != "cuda":
                raise DataProblem("--sync-bn needs CUDA devices (torch's SyncBatchNorm)", [],
                                  "drop --sync-bn on CPU (BatchNorm statistics are then per rank), or use "
                                  "--normalization instancenorm, which does not depend on the batch split")
            D.convert_sync_bn_inplace(self.method.students)
        self.method.to(self.device)
        counts = np.zeros(n_classes, np.float64)
        for c in data.labeled:
            counts += np.bincount(np.asarray(c.label).reshape(-1), minlength=n_classes)[:n_classes]
        self.method.init_from_label_counts(counts)
        self.optimizer = torch.optim.SGD(self.method.students.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=o.momentum > 0, weight_decay=o.weight_decay)
        self.amp = AUTOCAST[plan.precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16 and self.device.type == "cuda")
        self.mask_gen = torch.Generator().manual_seed(o.seed + 1)
        # Labeled and unlabeled patches come from generators of their own, so every method (whatever it draws for
        # unlabeled patches, or not) sees the same labeled patch sequence for a seed.
        self.sample_rng = np.random.default_rng(o.seed)
        self.unlabeled_rng = np.random.default_rng([o.seed, 1])
        # What running changes (the plan stays as it was): position, best validation, time spent, and after a CUDA
        # out-of-memory retry the patch and the unlabeled batch.
        self.start_iter = 0
        self.best: dict = {"mean_dice": -1.0, "iter": 0}
        self.nonfinite_in_row = 0
        self.patch: List[int] = plan.patch
        self.batch_unlabeled = plan.batch_unlabeled
        self.wall_before = float((resume_state or {}).get("wall_s", 0.0))
        self.cpu_before = float((resume_state or {}).get("cpu_s", 0.0))
        self.t0: Optional[float] = None
        self.cpu0 = 0.0
        self.final_iter: Optional[int] = None
        self.final_validated: Optional[int] = None
        if resume_state is not None:
            self._restore(resume_state)
        # Teachers and class weights start identical on every rank; DDP broadcasts rank 0's students.
        self.method.prepare(D.make_wrapper(self.ctx, self.device, False), D.sum_across_ranks(self.ctx),
                            (self.ctx.rank, self.ctx.world_size))
        self.lab_sampler, self.unl_sampler = self._samplers()
        # --warmup-step supervised: the warm-up's steps see the labeled batch alone (MethodConfig.warmup_step)
        self.supervised_warmup = (o.warmup_fraction > 0 and o.warmup_step == "supervised"
                                  and self.method.uses_unlabeled and self.method.has_supervised_step)

    def _samplers(self):
        """Labeled and unlabeled patch samplers of the current patch size, on the trainer's generators."""
        from micd.data.augment import make_augmentation
        from micd.data.sampling import PatchSampler

        return (PatchSampler(self.data.labeled, tuple(self.patch), self.sample_rng,
                             foreground_fraction=self.o.foreground_fraction,
                             augment=make_augmentation(self.o.augment, self.sample_rng)),
                PatchSampler(self.data.unlabeled, tuple(self.patch), self.unlabeled_rng, foreground_fraction=0.0,
                             augment=make_augmentation(self.o.augment, self.unlabeled_rng)))

    # ------------------------------------------------------------------ what the planner may ask (Calibratable)
    def use_patch(self, patch: Sequence[int]) -> None:
        self.patch = [int(v) for v in patch]
        self.lab_sampler, self.unl_sampler = self._samplers()

    def time_steps(self, n: int, beta: float, supervised: bool = False) -> List[float]:
        """`n` real training steps (`supervised`: the warm-up's steps on the labeled batch alone), each retried on a
        smaller patch after a CUDA out-of-memory error as the loop does; the seconds of each, device synchronised."""
        for s in self.method.students.values():
            s.train()
        return [self._timed_step(beta, supervised) for _ in range(n)]

    def _timed_step(self, beta: float, supervised: bool) -> float:
        for attempt in range(MAX_OOM_RETRIES + 1):
            t = time.time()
            try:
                self._train_step(beta, supervised)
            except RuntimeError as e:
                if self.device.type != "cuda" or not is_oom(e) or attempt == MAX_OOM_RETRIES:
                    raise
                self._shrink_after_oom()
                continue
            self._sync()
            return time.time() - t
        raise AssertionError("unreachable")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_validation(self) -> float:
        t = time.time()
        validate(self.method.inference_networks(), [self.data.validation[0]],
                 self.data.channels.names(self.data.labels), self.patch, self.device)
        self._sync()
        return time.time() - t

    def time_checkpoint(self) -> float:
        t = time.time()
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".pt", dir=self.run.run_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self._state(0), f)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(tmp)
        return time.time() - t

    def time_probe_pass(self, threads: int, patch: Sequence[int]) -> float:
        """A forward and backward pass of a copy of student A on a random batch of `patch`, best of two (the first
        includes one-time set-up); the copy and a saved torch RNG state leave the trainer as it was."""
        net = copy.deepcopy(self.method.students["student_a"]).train()
        x = torch.randn((self.o.batch_labeled + self.o.batch_unlabeled, 1, *patch),
                        generator=torch.Generator().manual_seed(0))
        rng = torch.get_rng_state()
        torch.set_num_threads(threads)
        best = math.inf
        for _ in range(2):
            t = time.time()
            with torch.autocast("cpu", dtype=self.amp or torch.float32, enabled=self.amp is not None):
                out = net(x)[0]
            out.float().mean().backward()
            best = min(best, time.time() - t)
        torch.set_rng_state(rng)
        return best

    # ------------------------------------------------------------------ the run
    def train(self) -> None:
        """Report the plan (`start`), then train to the plan's iteration count."""
        o, plan = self.o, self.plan
        self._start_event()
        self.t0 = time.time()
        self.cpu0 = time.process_time()
        it = self.start_iter
        pace = StepPace.for_plan(self.plan)
        oom_retries = 0
        for s in self.method.students.values():
            s.train()
        while it < plan.iterations:
            t_it = time.time()
            lr = learning_rate(o.lr_schedule, o.lr, it, plan.iterations, o.poly_power)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            beta = consistency_weight(it, plan.iterations, o.beta_max, o.rampup_fraction, o.warmup_fraction)
            supervised = self.supervised_warmup and in_warmup(it, plan.iterations, o.warmup_fraction)
            try:
                losses = self._train_step(beta, supervised)
            except RuntimeError as e:
                if self.device.type == "cuda" and is_oom(e) and oom_retries < MAX_OOM_RETRIES:
                    oom_retries += 1
                    self._shrink_after_oom()
                    continue
                raise
            it += 1
            pace.add(supervised, time.time() - t_it)
            if it % o.log_every == 0 or it == plan.iterations or it == self.start_iter + 1:
                spi = pace.recent(supervised)
                warm_left = (max(0, warmup_steps(plan.iterations, o.warmup_fraction) - it)
                             if self.supervised_warmup else 0)
                self.run.emit("iteration", iter=it, total=plan.iterations, loss=losses, lr=lr, beta=beta,
                              sec_per_iter=round(spi, 4), eta_s=round(pace.eta(warm_left, plan.iterations - it), 1))
            if self.data.validation and (it % plan.validate_every == 0 or it == plan.iterations):
                self._run_validation(it)
            if it % plan.checkpoint_every == 0 and it < plan.iterations:
                self._save_last(it)
            self.run.check_cancel(it, self._save_for_cancel)
        self.final_iter = it

    def _start_event(self) -> None:
        o, d, plan = self.o, self.data, self.plan
        for message in plan.warnings:
            self.run.warn(message)
        fields = plan.start_fields()
        self.run.emit("start", method=o.method, device=str(self.device), labeled=d.spec_counts["labeled"],
                      unlabeled=d.spec_counts["unlabeled"], validation=d.spec_counts["validation"],
                      start_iter=self.start_iter, resumed=self.start_iter > 0 or o.resume,
                      world_size=self.ctx.world_size, ranks=self.ctx.world_size, threads=torch.get_num_threads(),
                      amp=str(self.amp).replace("torch.", "") if self.amp else "off", **fields,
                      spacing=list(d.plan.target_spacing), modality=d.plan.modality, labels=d.labels,
                      notes=list(plan.notes) + self.init_notes, parent_model=self.parent_info,
                      run_dir=self.run.run_dir, version=__version__)

    def _batch(self, unlabeled: bool = True):
        o = self.o
        x_l, y_l = self.lab_sampler.sample(o.batch_labeled)
        x_u = None
        if self.method.uses_unlabeled and unlabeled:
            x_u, _ = self.unl_sampler.sample(self.batch_unlabeled)
        if self.ctx.enabled:  # every rank drew the global batch; keep this rank's share
            x_l, y_l = x_l[self.ctx.slice(o.batch_labeled)], y_l[self.ctx.slice(o.batch_labeled)]
            if x_u is not None:
                x_u = x_u[self.ctx.slice(self.batch_unlabeled)]
        to = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dt, non_blocking=True)  # noqa: E731
        return to(x_l, torch.float32), to(y_l, torch.long), (None if x_u is None else to(x_u, torch.float32))

    def _train_step(self, beta: float, supervised: bool = False) -> Dict[str, float]:
        """One optimizer step (`supervised`: the warm-up's, on the labeled batch alone); a non-finite loss skips the
        step (as DHC's GradScaler does) with a warning event, and only MAX_NONFINITE_STEPS skipped in a row end the
        run."""
        x_l, y_l, x_u = self._batch(unlabeled=not supervised)
        before = self.method.snapshot()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            if supervised:
                terms = self.method.supervised_step(x_l, y_l)
            else:
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
        self.nonfinite_in_row += 1
        if self.nonfinite_in_row >= MAX_NONFINITE_STEPS:
            raise FloatingPointError(f"{what} for {self.nonfinite_in_row} steps in a row ({values}); lower --lr "
                                     "or --beta-max, or try --amp off")
        self.run.warn(f"{what} ({values}); step skipped")
        return values

    def _shrink_after_oom(self) -> None:
        torch.cuda.empty_cache()
        self.optimizer.zero_grad(set_to_none=True)
        p = list(self.patch)
        axis = int(np.argmax(p))
        if p[axis] > 16:
            p[axis] = max(16, (int(p[axis] * 0.75) // 16) * 16)
            self.use_patch(p)
        elif self.batch_unlabeled > self.ctx.world_size:
            self.batch_unlabeled //= 2
        self.run.emit("retry", reason="CUDA out of memory", patch_size=list(self.patch),
                      batch_size={"labeled": self.o.batch_labeled, "unlabeled": self.batch_unlabeled})

    def _recalibrate_bn(self, it: int) -> None:
        """--bn-recalibrate N: precise BatchNorm statistics for what is validated and exported (bn_statistics.py),
        from a generator of their own, so the training streams are untouched. Every rank does the same."""
        if self.o.bn_recalibrate <= 0:
            return
        from micd.training.bn_statistics import recalibrate, uniform_batches

        draw = uniform_batches(self.data.unlabeled, self.patch, self.o.batch_labeled + self.batch_unlabeled,
                               np.random.default_rng([self.o.seed, 2, it]))
        recalibrate(self.method.export_networks().values(), self.o.bn_recalibrate, draw, self.device)

    def _run_validation(self, it: int) -> None:
        self._recalibrate_bn(it)
        self.final_validated = it
        if self.ctx.is_main:
            res = validate(self.method.inference_networks(), self.data.validation,
                           self.data.channels.names(self.data.labels), self.patch, self.device)
            self.run.emit("validation", iter=it, **res)
            if res["mean_dice"] > self.best["mean_dice"]:
                self.best = {"mean_dice": res["mean_dice"], "iter": it, "dice": res["dice"]}
                self._save_best(it, res)
        D.barrier(self.ctx)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, it: int) -> dict:
        running = self.t0 is not None
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
            "parent_model": self.parent_info,
            "wall_s": self.wall_before + (time.time() - self.t0 if running else 0.0),
            "cpu_s": self.cpu_before + (time.process_time() - self.cpu0 if running else 0.0),
            "version": __version__,
        }

    def _restore(self, s: dict) -> None:
        if s["method"] != self.o.method:
            raise DataProblem(f"the run in {self.run.run_dir} was trained with --method {s['method']}, not "
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
        self._save_for_cancel(it)
        D.barrier(self.ctx)

    def _save_for_cancel(self, it: int) -> Optional[str]:
        """Write last.pt (rank 0) and report it; the path, or None on the other ranks."""
        if not self.ctx.is_main:
            return None
        path = save_checkpoint(self._state(it), os.path.join(self.run.ckpt_dir, LAST), keep_previous=True)
        self.run.emit("checkpoint", path=path, iter=it, kind="last")
        return path

    def _save_best(self, it: int, metrics: dict) -> None:
        nets = {k: v.state_dict() for k, v in self.method.export_networks().items()}
        path = save_checkpoint({"iteration": it, "networks": nets, "metrics": metrics},
                               os.path.join(self.run.ckpt_dir, BEST))
        self.run.emit("checkpoint", path=path, iter=it, kind="best")

    # ------------------------------------------------------------------ result
    def _model_meta(self, it: int, final_state: dict, nets: dict, source: str) -> dict:
        labels = {str(k): v for k, v in sorted(self.data.labels.items())}
        return {
            "name": os.path.basename(self.run.run_dir),
            "labels": labels, "channels": list(self.data.channels.values),
            "network": self.net_config.to_dict(), "method": self.o.method,
            "method_options": self.o.method_config().to_dict(),
            "preprocessing": self.data.plan.to_dict(), "patch_size": list(self.patch),
            "default_ensemble": [k for k in nets if k.startswith("student")],
            "weights_from": source,
            "metrics": {"best_mean_dice": self.best["mean_dice"] if self.best["mean_dice"] >= 0 else None,
                        "best_iter": self.best.get("iter"), "dice": self.best.get("dice", {}),
                        # DiffDW/DistDW at the end of training (DHC, MICD), to see what the weighting did
                        "final_class_weights": self.method.current_weights},
            "provenance": {
                "dataset": os.path.abspath(self.o.dataset), "counts": self.data.spec_counts,
                "seed": self.o.seed, "iterations": it, "device": str(self.device),
                "world_size": self.ctx.world_size,
                "wall_s": round(final_state["wall_s"], 1), "cpu_s": round(final_state["cpu_s"], 1),
                "micd_version": __version__, "torch_version": torch.__version__,
                "python": platform.python_version(), "host": platform.node(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "parent_model": self.parent_info,  # --init-from
            },
        }

    def finish(self) -> None:
        """The last checkpoint, then the model folder: the best validation's weights when there was validation
        (and, with --export-last, the last weights beside them), else the last weights."""
        it = self.final_iter
        if self.final_validated != it:
            self._recalibrate_bn(it)  # (a validation at the last iteration has just done it)
        D.record_state_digest(self.run.run_dir, self.ctx, self.method)
        if not self.ctx.is_main:
            D.barrier(self.ctx)
            return
        final_state = self._state(it)
        save_checkpoint(final_state, os.path.join(self.run.ckpt_dir, LAST), keep_previous=True)
        self.run.emit("checkpoint", path=os.path.join(self.run.ckpt_dir, LAST), iter=it, kind="last")
        nets = self.method.export_networks()
        source = "last"
        best_path = os.path.join(self.run.ckpt_dir, BEST)
        use_best = bool(self.data.validation) and os.path.isfile(best_path)
        if use_best and self.o.export_last:
            save_model_package(os.path.join(self.run.run_dir, "model-last"),
                               self._model_meta(it, final_state, nets, "last"), nets)
        if use_best:
            best = load_checkpoint(best_path)
            for k, v in nets.items():
                v.load_state_dict(best["networks"][k])
            source = f"best validation (iteration {best['iteration']})"
        model_dir = os.path.join(self.run.run_dir, MODEL_DIR)
        meta = self._model_meta(it, final_state, nets, source)
        save_model_package(model_dir, meta, nets)
        self.run.emit("done", model=model_dir, best_mean_dice=meta["metrics"]["best_mean_dice"], iter=it,
                      wall_s=meta["provenance"]["wall_s"])
        D.barrier(self.ctx)
