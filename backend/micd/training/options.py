"""Every option of `micd train` in one place: its default, its help text, and how it maps to the command line.

Precedence, lowest first: these defaults, the saved `RUN_DIR/config.json` (with --resume), `--config FILE`, then
flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, List, Optional

from micd.contract import METHODS, TRAIN_DEFAULTS, parse_duration
from micd.methods.base import MethodConfig

DEFAULT_ITERATIONS = TRAIN_DEFAULTS["iterations"]  # without --iterations and without --time-budget


def opt(default: Any, help: str, **argparse_kwargs: Any):
    md = {"help": help, **argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=md)
    return field(default=default, metadata=md)


@dataclass(frozen=True)
class TrainOptions:
    """The options of one `micd train` invocation, as resolved; never changed afterwards (what is derived from them
    is the plan's: micd.training.plan)."""

    dataset: Optional[str] = opt(None, "dataset JSON file, or an MSD/nnU-Net folder (imagesTr/, labelsTr/, dataset.json)")
    out: Optional[str] = opt(None, "run folder: config, events.jsonl, checkpoints and, on success, model/")
    method: str = opt(TRAIN_DEFAULTS["method"], "training method", choices=list(METHODS))
    iterations: Optional[int] = opt(None, f"number of optimizer steps (the run ends at this iteration count, also after "
                                    f"--resume; default: planned from --time-budget, else {DEFAULT_ITERATIONS})",
                                    type=int)
    time_budget: Optional[str] = opt(None, "wall-clock budget of the whole run, e.g. 90s, 45m, 2h or 1h30m: a few "
                                     "timed steps on the real data and device fix --iterations so that training, "
                                     "validation and export end within it (an --iterations given explicitly wins; "
                                     "--resume keeps the planned count)")
    patch_size: Optional[List[int]] = opt(None, "training patch D H W in voxels of the preprocessed grid (multiples of "
                                          "16); planned from the data and memory when omitted", nargs=3, type=int,
                                          metavar=("D", "H", "W"))
    filters: int = opt(TRAIN_DEFAULTS["filters"], "base width of the VNet students (the spec uses 32 on GPUs)")
    normalization: str = opt("batchnorm", "normalisation layers of the students (instancenorm is per sample, so "
                             "it does not depend on how the batch is split over ranks)",
                             choices=["batchnorm", "instancenorm", "none"])
    dropout: float = opt(0.5, "Dropout3d probability on the bottleneck and the last decoder features (DHC: 0.5)")
    device: str = opt(TRAIN_DEFAULTS["device"], "auto (CUDA when present), cpu, cuda or cuda:N")
    seed: int = opt(TRAIN_DEFAULTS["seed"], "random seed; with the same seed a CPU run repeats exactly")
    checkpoint_every: int = opt(TRAIN_DEFAULTS["checkpoint-every"], "save RUN_DIR/checkpoints/last.pt every N iterations")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint", action="store_true")
    init_from: Optional[str] = opt(None, "start the students (and teachers) from this model folder's weights, e.g. "
                                   "an earlier RUN_DIR/model, after adding labels; the labels and the network "
                                   "(--filters, --normalization) must match it; everything else is a fresh run "
                                   "(own --out, schedule, checkpoints); the parent is recorded in the model's "
                                   "provenance", metavar="MODEL_DIR")
    config: Optional[str] = opt(None, "JSON file of options (keys as the long flags, with - or _); flags override it")
    progress: str = opt("jsonl", "jsonl: one JSON event per line on stdout; bar: a tqdm progress bar on stderr "
                        "(events still go to events.jsonl); none: nothing on stdout", choices=["jsonl", "bar", "none"])
    batch_labeled: int = opt(TRAIN_DEFAULTS["batch-labeled"], "labeled patches per iteration (global, over all ranks)")
    batch_unlabeled: int = opt(TRAIN_DEFAULTS["batch-unlabeled"], "unlabeled patches per iteration (global, over all ranks)")
    lr: float = opt(TRAIN_DEFAULTS["lr"], "initial learning rate (SGD, momentum 0.9, Nesterov)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(3e-5, "SGD weight decay")
    lr_schedule: str = opt("poly", "poly: lr·(1 − t/T)^power per iteration; constant", choices=["poly", "constant"])
    poly_power: float = opt(0.9, "exponent of the poly schedule")
    validate_every: int = opt(0, "validate every N iterations (0: ten times per run) and always at the end")
    amp: str = opt("auto", "mixed precision: auto (fp16 AMP on CUDA; bf16 autocast on CPUs with AMX/AVX512-BF16, else off), "
                   "off, bf16, fp16",
                   choices=["auto", "off", "bf16", "fp16"])
    cache_dir: Optional[str] = opt(None, "folder for the preprocessed memory-mapped arrays (default RUN_DIR/cache)")
    target_spacing: Optional[List[float]] = opt(None, "resample to this spacing X Y Z in mm (default: median of the "
                                                "labeled set)", nargs=3, type=float, metavar=("X", "Y", "Z"))
    modality: str = opt("auto", "intensity normalisation: CT (HU window to [0,1]) or MR (robust z-score); auto reads "
                        "the dataset file or guesses from intensities", choices=["auto", "CT", "MR"])
    ct_window: Optional[List[float]] = opt(None, "HU window LO HI for CT (default -175 250)", nargs=2, type=float,
                                           metavar=("LO", "HI"))
    foreground_fraction: float = opt(0.33, "share of labeled patches centred on a foreground voxel")
    augment: str = opt("flips", "patch augmentation for every method: flips (random flips, the spec's); nnunet: also "
                       "nnU-Net v2's default rotation, scaling, noise, blur, brightness, contrast, low resolution and "
                       "gamma (MONAI transforms; micd.data.augment)", choices=["flips", "nnunet"])
    bn_recalibrate: int = opt(0, "before each validation and the export, re-estimate the BatchNorm running statistics "
                              "of the networks from this many batches of uniform patches of the unlabeled images "
                              "(precise BN; 0: off, keep the running averages of training; helped DHC's last weights and hurt "
                              "the supervised baseline in benchmarks/bn_posthoc.py)")
    val_fraction: float = opt(TRAIN_DEFAULTS["val-fraction"], "share of labeled cases held out for validation when the dataset gives none "
                          "(at most 20; 0: none, the model keeps the last weights)")
    export_last: bool = opt(False, "when validation picks the best weights for RUN_DIR/model, also export the last "
                            "weights to RUN_DIR/model-last (to compare the two)", action="store_true")
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default)")
    log_every: int = opt(1, "emit an iteration event every N iterations (the last one always)")
    nproc: int = opt(0, "launch this many processes on this machine with torchrun (DistributedDataParallel)")
    sync_bn: bool = opt(False, "synchronise BatchNorm statistics across ranks (SyncBatchNorm, CUDA only); without it "
                        "each rank normalises with the statistics of its own share of the batch", action="store_true")
    # method options (micd-method.md §9); defaults are the spec's recommendations
    beta_max: float = opt(MethodConfig.beta_max, "β_max of the Gaussian ramp-up (Eq. 7)")
    rampup_fraction: float = opt(MethodConfig.rampup_fraction, "ramp-up length as a fraction of --iterations")
    warmup_fraction: float = opt(MethodConfig.warmup_fraction, "supervised warm-up: β = 0 for this share of "
                                 "--iterations, then the ramp-up starts")
    warmup_step: str = opt(MethodConfig.warmup_step, "the warm-up's steps: supervised (the labeled batch alone, as "
                           "--method supervised: about a quarter of a MICD step, so a time budget fits more) or full "
                           "(the method's whole step with β = 0)", choices=["supervised", "full"])
    term_weights: List[float] = opt(list(MethodConfig.term_weights), "multipliers of MCPC, CFC, CMD inside Eq. 7",
                                    nargs=3, type=float, metavar=("MCPC", "CFC", "CMD"))
    mask_ratio: float = opt(MethodConfig.mask_ratio, "r of Eq. 2: probability that a mask block is dropped")
    mask_block: int = opt(MethodConfig.mask_block, "s of Eq. 2: side of a mask block in voxels (0: an eighth of "
                          "each patch axis, at least 2)")
    mask_fill: str = opt(MethodConfig.mask_fill, "value of masked blocks: min (the patch's minimum, its background "
                         "and padding value) or zero (Eq. 2 literally; mean tissue after an MR z-score)",
                         choices=["min", "zero"])
    bn_passes: Optional[str] = opt(None, "BatchNorm batches of a training forward: separate (the labeled inputs "
                                   "are normalised on their own and alone set the running statistics, as in "
                                   "supervised training; the rest, MICD's masked inputs or the peers' unlabeled "
                                   "ones, apart: MICD's default) or joint (one batch: the default of mean teacher, "
                                   "CPS and DHC, as their code)", choices=["separate", "joint"])
    pseudo_labels: Optional[str] = opt(None, "where hard pseudo-labels (and DistDW's class statistics) come from: "
                                       "train_pass (the training forward, dropout on: CPS/DHC, their default), "
                                       "no_dropout (a gradient-free pass with dropout off) or teacher (the "
                                       "EMA teachers, dropout off: MICD's default, MICD only)",
                                       choices=["train_pass", "no_dropout", "teacher"])
    pseudo_threshold: float = opt(MethodConfig.pseudo_threshold, "ignore pseudo-labelled voxels whose softmax "
                                  "confidence is below this (0: none, as DHC)")
    mask_shared: bool = opt(True, "one mask per sample for both students (--no-mask-shared: independent masks)",
                            action=argparse.BooleanOptionalAction)
    mask_labeled: bool = opt(True, "mask labeled inputs as well as unlabeled ones", action=argparse.BooleanOptionalAction)
    mcpc_mode: str = opt(MethodConfig.mcpc_mode, "MCPC (Eq. 3): which prediction learns which pseudo-label",
                         choices=["masked_from_clean", "clean_from_masked", "masked_from_masked"])
    keep_clean_cps: bool = opt(False, "also keep DHC's clean cross pseudo supervision", action="store_true")
    cfc_distance: str = opt(MethodConfig.cfc_distance, "CFC (Eq. 4) distance", choices=["kl_sym", "kl", "mse"])
    cfc_weights: List[float] = opt(list(MethodConfig.cfc_weights), "λ_1..4 of CFC, coarse to full resolution",
                                   nargs=4, type=float)
    cfc_inputs: str = opt(MethodConfig.cfc_inputs, "CFC on masked or clean inputs", choices=["masked", "clean"])
    cmd_mode: str = opt(MethodConfig.cmd_mode, "CMD (Eq. 5) form", choices=["own_teacher", "cross_teacher",
                                                                            "neg_discrepancy"])
    cmd_weighted: bool = opt(False, "apply W_diff/W_dist to CMD too", action="store_true")
    class_weights: Optional[str] = opt(None, "class weighting of DHC, MICD and supervised: dhc (DiffDW for student "
                                       "A, DistDW for B, exactly as DHC: DHC's default), dhc-bgfloor (the same with "
                                       "the background weight raised to the foreground mean, so weighted CE does not "
                                       "favour foreground: MICD's and supervised's default; supervised's DistDW "
                                       "counts student B's predictions on the labeled patches) or none (unweighted "
                                       "CE and Dice: plain supervised training)",
                                       choices=["dhc", "dhc-bgfloor", "none"])
    ema_alpha: float = opt(MethodConfig.ema_alpha, "EMA decay α of the teachers (Eq. 1)")
    init_a: Optional[str] = opt(None, "weight init of student A (default: Kaiming)", choices=["kaiming", "xavier"])
    init_b: Optional[str] = opt(None, "weight init of student B (default: Kaiming for dhc and micd, as DHC; Xavier "
                                "for supervised, mean-teacher and cps, as CPS)", choices=["kaiming", "xavier"])

    def method_config(self) -> MethodConfig:
        return MethodConfig.from_dict(asdict(self))

    def to_dict(self) -> dict:
        return asdict(self)


# Options that describe where/how this invocation runs rather than what is trained: not restored on --resume.
PER_INVOCATION = {"resume", "config", "progress", "nproc", "device", "num_threads"}
# Options a resumed run may change without changing what it trains (how long, how often it reports, where it is).
RESUME_MAY_CHANGE = PER_INVOCATION | {"iterations", "time_budget", "log_every", "checkpoint_every", "validate_every",
                                      "export_last", "out", "cache_dir"}
# Options added after runs were saved, with the value that trains as those runs were started (a saved config or a
# checkpoint without the option resumes with it): a resumed run never changes form because micd gained an option.
BEFORE_THE_OPTION = {"warmup_step": "full"}


def as_saved(saved: dict) -> dict:
    """A run's saved options with the options it predates filled in as it was trained (BEFORE_THE_OPTION)."""
    return {**{k: v for k, v in BEFORE_THE_OPTION.items() if k not in saved}, **saved} if saved else saved


def changed_on_resume(trained_with: dict, now: TrainOptions) -> List[str]:
    """The options that shape training and differ between a checkpoint and the run resuming it, as "name: old -> new"
    (None shown as "default": the method's own choice)."""
    shown = lambda v: "default" if v is None else v  # noqa: E731
    trained_with = as_saved(trained_with)
    current = now.to_dict()
    return [f"{k}: {shown(trained_with[k])} -> {shown(current[k])}" for k in sorted(current)
            if k in trained_with and k not in RESUME_MAY_CHANGE and trained_with[k] != current[k]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(TrainOptions):
        md = dict(f.metadata)
        help_text = md.pop("help")
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kwargs = dict(md)
        kwargs.setdefault("type", type(default) if isinstance(default, (int, float, str)) and
                          not isinstance(default, bool) and "action" not in md else None)
        if kwargs.get("type") is None:
            kwargs.pop("type")
        if isinstance(default, list) and "type" not in kwargs:
            kwargs["type"] = type(default[0])
        if f.name in ("dataset", "out", "config", "cache_dir", "init_from") and "type" not in kwargs:
            kwargs["type"] = str
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {shown})", **kwargs)


def resolve(ns: argparse.Namespace, saved: Optional[dict] = None) -> TrainOptions:
    """Merge defaults < saved run config < --config file < explicit flags into TrainOptions."""
    given = vars(ns).copy()
    given.pop("func", None)
    given.pop("command", None)
    merged = TrainOptions().to_dict()
    if saved:
        merged.update({k: v for k, v in as_saved(saved).items() if k in merged and k not in PER_INVOCATION})
    cfg_path = given.get("config")
    if cfg_path:
        merged.update(load_config_file(cfg_path))
    merged.update(given)
    opts = TrainOptions(**merged)
    if opts.time_budget is not None:
        try:
            parse_duration(opts.time_budget)
        except ValueError as e:  # the accepted forms, said with the flag's name
            raise ValueError(f"--time-budget: {e}") from None
    return opts


def load_config_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object of options")
    names = {f.name for f in fields(TrainOptions)}
    out = {}
    for k, v in data.items():
        key = k.lstrip("-").replace("-", "_")
        if key not in names:
            raise ValueError(f"--config {path}: unknown option {k!r}")
        out[key] = v
    return out
