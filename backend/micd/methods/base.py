"""The one small interface every training method implements, and the options of all methods in one dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from micd.contract import TRAIN_DEFAULTS
from micd.methods.class_weights import BranchWeights, Reduce
from micd.methods.ema import ema_alpha
from micd.methods.losses import GlobalBatch, dice_ce, hard_pseudo_labels, weighted_ce
from micd.nets.vnet import NetworkConfig, VNet, build_network, split_normalization

BN_PASSES = ("separate", "joint")


@dataclass
class MethodConfig:
    """Options of the methods. Defaults are the spec's recommended choices (docs: micd-method.md §9)."""

    beta_max: float = TRAIN_DEFAULTS["beta-max"]  # Eq. 7: weight of the unsupervised terms after ramp-up (DHC's -w 0.1)
    rampup_fraction: float = 1.0     # ramp length as a fraction of all iterations (DHC: the whole run)
    term_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # MCPC, CFC, CMD multipliers inside Eq. 7
    warmup_fraction: float = 0.0     # β = 0 for this share of the run (supervised warm-up), then the ramp starts
    warmup_step: str = "supervised"  # the warm-up's steps: supervised (the labeled batch only, as the supervised
    #                                  method: no unlabeled or masked pass, about a quarter of MICD's step) | full
    #                                  (the method's whole step at β = 0)
    mask_ratio: float = TRAIN_DEFAULTS["mask-ratio"]  # Eq. 2: r, probability that a block is dropped
    mask_block: int = 0              # Eq. 2: s, block side in voxels; 0: an eighth of each patch axis (MIC's ratio)
    mask_fill: str = "min"           # min: the patch's minimum (its background, also the padding value) | zero
    mask_shared: bool = True         # one mask per sample for both students
    mask_labeled: bool = True        # mask labeled inputs too (the paper masks both sets)
    mcpc_mode: str = "masked_from_clean"  # | clean_from_masked | masked_from_masked
    keep_clean_cps: bool = False     # add DHC's clean cross pseudo supervision as well
    cfc_distance: str = "kl_sym"     # | kl | mse
    cfc_weights: Tuple[float, float, float, float] = (0.2, 0.4, 0.6, 0.8)  # λ_1..4, coarse -> full resolution
    cfc_inputs: str = "masked"       # | clean
    cmd_mode: str = "own_teacher"    # | cross_teacher | neg_discrepancy
    cmd_weighted: bool = False       # apply W_diff/W_dist in CMD too
    cmd_margin: float = 0.1          # hinge margin of neg_discrepancy
    ema_alpha: float = 0.99          # Eq. 1
    init_a: Optional[str] = None     # None: the method's own choice (DHC/MICD: Kaiming for both, as DHC; the CPS
    init_b: Optional[str] = None     # family: Kaiming for A, Xavier for B); "kaiming" or "xavier" overrides it
    class_weights: Optional[str] = None  # None: the method's own (DHC: dhc; MICD: dhc-bgfloor; supervised: none).
    #                                  dhc: DiffDW for A, DistDW for B exactly as DHC; dhc-bgfloor: the same with the
    #                                  background weight raised to the foreground mean; none: unweighted losses
    pseudo_labels: Optional[str] = None  # None: the method's own (CPS/DHC: train_pass; MICD: teacher).
    #                                  train_pass: argmax of the training forward (dropout on), as CPS/DHC;
    #                                  no_dropout: a gradient-free pass with dropout off; teacher: the EMA teacher
    pseudo_threshold: float = 0.0    # ignore pseudo-labelled voxels whose softmax confidence is below this (0: off)
    bn_passes: Optional[str] = None  # None: the method's own (MICD: separate; mean teacher, CPS, DHC: joint, as
    #                                  their code). separate: the labeled inputs are normalised on their own and alone
    #                                  set BatchNorm's running statistics; the rest of the forward batch (MICD: the
    #                                  masked inputs; the peers: the unlabeled ones) is normalised apart | joint: one
    #                                  batch
    diffdw_accumulate: int = 50
    distdw_momentum: float = 0.99
    mt_noise: float = 0.1            # mean teacher: input noise std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        known = {}
        for k, v in d.items():
            if k in cls.__dataclass_fields__:
                known[k] = tuple(v) if isinstance(v, list) else v
        return cls(**known)


def gaussian_rampup(t: float, length: float, beta_max: float) -> float:
    """Eq. 7's β(t) = β_max · exp(−5 (1 − t/T)²), t clipped to [0, T]; β_max at and after T."""
    if length <= 0:
        return beta_max
    p = min(max(t, 0.0), length) / length
    return float(beta_max * math.exp(-5.0 * (1.0 - p) ** 2))


class Method(nn.Module):
    """A training method: owns the students (and any teachers or class-weight state) and computes the loss terms.

    `students` are what the optimizer trains. `step()` returns a dict of loss tensors that includes "total".
    The training loop calls `prepare()` once (to wrap students, e.g. in DistributedDataParallel), `step()` and
    `after_step()` every iteration, and saves `extra_state()` in checkpoints.
    """

    name = "base"
    uses_unlabeled = True
    branch_inits: Tuple[str, str] = ("kaiming", "kaiming")
    # The method's own value of options left at None in MethodConfig (see `option`).
    own_defaults: Dict[str, object] = {}

    @property
    def current_weights(self) -> Optional[Dict[str, list]]:
        """The class weights the losses receive now; None for a method without class weighting."""
        return None

    def __init__(self, net_config: NetworkConfig, num_classes: int, config: MethodConfig):
        super().__init__()
        self.cfg = config
        self.num_classes = num_classes
        inits = self.inits()
        self.students = nn.ModuleDict({"student_a": build_network(net_config, inits[0]),
                                       "student_b": build_network(net_config, inits[1])})
        self.runners: Dict[str, Callable] = dict(self.students.items())
        self.reduce: Reduce = lambda t: t
        self.shard = (0, 1)  # (rank, world size): random draws are made for the global batch, then sliced
        self.batch = GlobalBatch(1)
        self.optimizer_steps = 0
        # True when the teachers were loaded from a trained model (--init-from): the EMA warm-up, which makes a
        # teacher a copy of its student at the first step, would throw them away.
        self.teachers_warm = False
        if self.option("bn_passes") not in (None, *BN_PASSES):
            raise ValueError(f"bn_passes must be one of {BN_PASSES}")

    def ema_decay(self) -> float:
        """The EMA decay for this optimizer step (Eq. 1): warmed up from 0 for new teachers, full for loaded ones."""
        return self.cfg.ema_alpha if self.teachers_warm else ema_alpha(self.optimizer_steps, self.cfg.ema_alpha)

    def option(self, name: str):
        """A MethodConfig option, or this method's own default where the config leaves it at None."""
        v = getattr(self.cfg, name)
        return self.own_defaults.get(name) if v is None else v

    def inits(self) -> Tuple[str, str]:
        return (self.cfg.init_a or self.branch_inits[0], self.cfg.init_b or self.branch_inits[1])

    def prepare(self, wrap: Callable[[nn.Module], Callable], reduce: Optional[Reduce] = None,
                shard: Tuple[int, int] = (0, 1)) -> None:
        """Wrap each student for training (identity, or DDP), set the cross-rank sum used by statistics and this
        rank's share of the global batch."""
        self.runners = {k: wrap(v) for k, v in self.students.items()}
        if reduce is not None:
            self.reduce = reduce
        self.shard = shard
        self.batch = GlobalBatch(shard[1])

    def ce(self, logits, target, weight=None) -> torch.Tensor:
        """Weighted CE over the global batch (see losses.GlobalBatch)."""
        return weighted_ce(logits, target, weight, self.batch)

    def dice_ce(self, logits, target, weight=None) -> torch.Tensor:
        return dice_ce(logits, target, weight, self.batch)

    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard pseudo-labels with the configured confidence threshold."""
        return hard_pseudo_labels(logits, self.cfg.pseudo_threshold)

    def pseudo_logits(self, key: str, x: torch.Tensor, train_logits: Optional[torch.Tensor]) -> torch.Tensor:
        """Detached logits of student `key` on x that pseudo-labels (and class statistics) are taken from.

        train_pass: the training forward's own logits (dropout on), as CPS and DHC; no_dropout: a gradient-free
        pass of the student with dropout off, so random channel drops do not become false foreground labels;
        teacher: the student's EMA teacher (dropout off), for methods that have teachers.
        """
        source = self.option("pseudo_labels")
        if source == "train_pass":
            if train_logits is None:
                raise ValueError("pseudo_labels=train_pass needs the training forward's logits")
            return train_logits.detach()
        with torch.no_grad():
            if source == "no_dropout":
                return self.students[key](x, turnoff_drop=True)[0]
            if source == "teacher":
                teachers = getattr(self, "teachers", None)
                if teachers is None:
                    raise ValueError(f"pseudo_labels=teacher: method {self.name} has no EMA teachers")
                return teachers[key.replace("student", "teacher")](x, turnoff_drop=True)[0]
        raise ValueError(f"pseudo_labels must be train_pass, no_dropout or teacher, got {source!r}")

    def labeled_first_forward(self, key: str, x: torch.Tensor, n_labeled: int):
        """The training forward of student `key` on x = [labeled; other]. With bn_passes=separate, BatchNorm
        normalises the first `n_labeled` samples and the rest apart and keeps running statistics from the labeled ones
        only, as supervised training does; with joint, the whole batch is one BatchNorm batch (the peers' code)."""
        if self.option("bn_passes") == "separate":
            with split_normalization(self.students[key], n_labeled):
                return self.runners[key](x)
        return self.runners[key](x)

    def global_draw(self, draw: Callable[[int], torch.Tensor], n_local: int) -> torch.Tensor:
        """Draw random tensors for the whole global batch (same generator state on every rank) and keep this rank's
        rows, so that N ranks see exactly what one process with the global batch would."""
        rank, world = self.shard
        return draw(n_local * world)[rank * n_local:(rank + 1) * n_local]

    def init_from_label_counts(self, counts: np.ndarray) -> None:
        """Called once with the voxel count of each class over the labeled training set."""

    def step(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: Optional[torch.Tensor], beta: float,
             generator: torch.Generator) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def has_supervised_step(self) -> bool:
        """Whether `supervised_step` is a step of its own (a warm-up of supervised steps is cheaper then)."""
        return False

    def supervised_step(self, x_l: torch.Tensor, y_l: torch.Tensor) -> Dict[str, torch.Tensor]:
        """A step on the labeled batch alone (the warm-up's, see MethodConfig.warmup_step)."""
        raise NotImplementedError(f"method {self.name} has no supervised step")

    def after_step(self) -> None:
        """Called after each optimizer step (EMA teachers)."""
        self.optimizer_steps += 1

    def export_networks(self) -> Dict[str, nn.Module]:
        """Networks written to the model folder; the first two (students) are the default ensemble."""
        return dict(self.students.items())

    def inference_networks(self) -> List[nn.Module]:
        return list(self.students.values())

    def extra_state(self) -> dict:
        return {"optimizer_steps": self.optimizer_steps, "teachers_warm": self.teachers_warm}

    def snapshot(self) -> dict:
        """What a forward pass changes besides the parameters (class-weight statistics, BatchNorm running
        statistics), so that a skipped step can be undone by `restore`."""
        import copy

        return {"extra": copy.deepcopy(self.extra_state()),
                "buffers": [b.detach().clone() for b in self.buffers()]}

    def restore(self, snap: dict) -> None:
        self.load_extra_state(snap["extra"])
        with torch.no_grad():
            for b, saved in zip(self.buffers(), snap["buffers"]):
                b.copy_(saved)

    def load_extra_state(self, state: dict) -> None:
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self.teachers_warm = bool(state.get("teachers_warm", False))  # checkpoints before it: warm-up as they ran


class ClassWeightedMethod(Method):
    """A two-student method whose losses take DHC's class weights (`BranchWeights`) as the `class_weights` option
    says: W_diff for student A, W_dist for student B. Subclasses decide which logits feed DistDW in `step`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weighting = BranchWeights(self.num_classes, self.option("class_weights"), self.cfg.diffdw_accumulate,
                                       self.cfg.distdw_momentum)

    @property
    def weighted(self) -> bool:
        return self.weighting.mode != "none"

    def prepare(self, wrap, reduce=None, shard=(0, 1)):
        super().prepare(wrap, reduce, shard)
        self.weighting.set_reduce(self.reduce)

    def init_from_label_counts(self, counts: np.ndarray) -> None:
        self.weighting.distdw.init_from_counts(counts)

    def supervised_losses(self, x_l: torch.Tensor, y_l: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both students' weighted Dice + CE on the labeled batch alone; DistDW counts student B's predictions on
        it (the only patches this step sees)."""
        za, _ = self.runners["student_a"](x_l)
        zb, _ = self.runners["student_b"](x_l)
        w_a, w_b = self.weighting.update(za, y_l, zb)
        return self.dice_ce(za, y_l, w_a), self.dice_ce(zb, y_l, w_b)

    @property
    def has_supervised_step(self) -> bool:
        return True

    def supervised_step(self, x_l: torch.Tensor, y_l: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The warm-up step of a co-training method: its `sup` term alone, computed as the supervised method does."""
        sup_a, sup_b = self.supervised_losses(x_l, y_l)
        return {"sup": sup_a + sup_b, "total": sup_a + sup_b}

    def extra_state(self) -> dict:
        return {**super().extra_state(), **(self.weighting.state_dict() if self.weighted else {})}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if self.weighted and "diffdw" in state:
            self.weighting.load_state_dict(state)

    @property
    def current_weights(self) -> Optional[Dict[str, list]]:
        """The weights the losses receive now (before any background floor), or None when unweighted."""
        return self.weighting.current if self.weighted else None
