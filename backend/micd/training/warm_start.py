"""`micd train --init-from MODEL_DIR`: start the networks from an existing model folder instead of random weights.

Only the weights come from the parent (read with safetensors through `model_package`, no pickle); everything else
is a fresh run: its own run folder, optimizer, learning-rate and β schedules, class-weight statistics, checkpoints.
The parent must have the same labels (values and names) and the same network (architecture, input channels,
width, normalisation; dropout has no weights and may differ). Students load the parent's students; teachers (for
methods that have them) load the parent's teachers, or the parent's students when it has none (a CPS or supervised
parent). The parent is recorded in the new model's `provenance.parent_model`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional, Tuple

import torch

from micd.data.label_channels import LabelChannels
from micd.model_package import WEIGHTS_FILE, ModelPackage, ModelPackageError, load_model_package, read_model_json
from micd.nets.vnet import NetworkConfig

OUTPUT_LAYER = "head."  # the VNet's 1x1x1 convolution to the class channels (nets/vnet.py)
# Network fields that shape the weights; dropout does not.
WEIGHT_FIELDS = ("architecture", "in_channels", "filters", "normalization")
FLAG = {"filters": "--filters", "normalization": "--normalization"}


class WarmStartError(ValueError):
    """The parent model cannot start this run; `hint` says what to change."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


def load_parent(path: str) -> ModelPackage:
    try:
        return load_model_package(path)
    except ModelPackageError as e:
        raise WarmStartError(f"--init-from {path}: {e}", "give a model folder written by micd train "
                             "(RUN_DIR/model)") from None


def check_network(parent: ModelPackage, filters: int, normalization: str) -> None:
    """Compare what the options ask for with the parent's network, before any data is prepared."""
    want = NetworkConfig(filters=filters, normalization=normalization).to_dict()
    have = parent.network_config.to_dict()
    diff = [k for k in WEIGHT_FIELDS if want[k] != have[k]]
    if diff:
        got = ", ".join(f"{k} {want[k]} here, {have[k]} in the parent" for k in diff)
        flags = " ".join(f"{FLAG[k]} {have[k]}" for k in diff if k in FLAG)
        raise WarmStartError(f"--init-from {parent.path}: the network does not match ({got})",
                             f"train with {flags} to continue from this model, or drop --init-from" if flags else
                             "drop --init-from; this model's network cannot be built by micd train")


def check_labels(parent: ModelPackage, labels: Dict[int, str]) -> None:
    mine = {int(k): str(v) for k, v in labels.items()}
    theirs = parent.labels
    if mine != theirs:
        show = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items()))
        raise WarmStartError(f"--init-from {parent.path}: the labels do not match (dataset: {show(mine)}; parent "
                             f"model: {show(theirs)})", "give the dataset the parent's labels (same values and "
                             "names), or train from scratch without --init-from")


def check_parent(opts, resuming: bool,
                 recorded: Optional[dict] = None) -> Tuple[Optional[ModelPackage], Optional[dict]]:
    """Before any data is prepared: (the parent's package, or None when resuming or without --init-from; its
    provenance record). A resumed run has its weights in the checkpoint and its parent record as it was when the run
    started (`recorded`; read again from the folder only for checkpoints that predate it)."""
    if not opts.init_from:
        return None, None
    if resuming:
        return None, recorded or parent_record(opts.init_from)
    record = parent_record(opts.init_from)
    parent = load_parent(opts.init_from)
    check_network(parent, opts.filters, opts.normalization)
    return parent, record


def parent_state(parent: ModelPackage, branch: str, channels: LabelChannels) -> Dict[str, torch.Tensor]:
    """The parent's weights of `branch` for this run's output channels. A parent written before the channel map has
    one output per label value (output k = value k); the output layer's rows of the labels' values are kept, which
    is the same network on the labels it knows."""
    state = parent.networks[branch].state_dict()
    if parent.channels.values != channels.values and set(channels.values) <= set(parent.channels.values):
        rows = torch.tensor([parent.channels.values.index(v) for v in channels.values])
        state = {k: (v.index_select(0, rows) if k.startswith(OUTPUT_LAYER) else v) for k, v in state.items()}
    return state


def check_shapes(parent: ModelPackage, branch: str, net, state: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Every tensor of the new network exists in the parent with the same shape (this also covers what the options
    do not set directly, e.g. strides planned from the data's slice thickness)."""
    mine, theirs = net.state_dict(), (state if state is not None else parent.networks[branch].state_dict())
    bad = sorted(set(mine) ^ set(theirs)) + [n for n in mine if n in theirs and mine[n].shape != theirs[n].shape]
    if not bad:
        return
    have = parent.network_config.to_dict()
    want = getattr(net, "config", None)
    want = want.to_dict() if want is not None else {}
    diff = ", ".join(f"{f} {want.get(f)} here, {have.get(f)} in the parent" for f in sorted(set(want) | set(have))
                     if f != "dropout" and want.get(f) != have.get(f))
    n = bad[0]
    shapes = (f"{tuple(mine[n].shape) if n in mine else 'absent'} here, "
              f"{tuple(theirs[n].shape) if n in theirs else 'absent'} in the parent")
    raise WarmStartError(f"--init-from {parent.path}: the network does not match ({diff or 'layer shapes'}; "
                         f"{len(bad)} tensor(s) differ, e.g. {n}: {shapes})",
                         "train with the parent's network settings (see its model.json \"network\"), or drop "
                         "--init-from")


def apply(method, parent: ModelPackage, labels: Dict[int, str], plan) -> List[str]:
    """Check the labels, copy the parent's weights into the method's students (and teachers); returns notes for
    the start event."""
    check_labels(parent, labels)
    channels = LabelChannels.for_labels(labels)
    notes = []
    if parent.channels.values != channels.values:
        notes.append(f"--init-from: the parent has one output per label value ({parent.channels.count}, written "
                     f"before the channel map); the outputs of the {channels.count - 1} labels and background are used")
    if parent.plan != plan:
        notes.append(f"--init-from: the parent was trained on another grid or normalisation (spacing "
                     f"{list(parent.plan.target_spacing)}, {parent.plan.modality}; this run: "
                     f"{list(plan.target_spacing)}, {plan.modality}); its weights are a starting point only")
    students = method.students
    for k in students:
        if k not in parent.networks:
            raise WarmStartError(f"--init-from {parent.path}: the model has no {k}",
                                 "give a model folder written by micd train (it stores both students)")
        state = parent_state(parent, k, channels)
        check_shapes(parent, k, students[k], state)
        students[k].load_state_dict(state, strict=True)
    teachers = getattr(method, "teachers", None)
    if teachers is not None:
        from_teachers = all(k in parent.networks for k in teachers)
        for k in teachers:
            src = (parent_state(parent, k, channels) if from_teachers else
                   students[k.replace("teacher", "student")].state_dict())
            teachers[k].load_state_dict(src, strict=True)
        method.teachers_warm = True  # trained teachers: full EMA decay from the first step (no warm-up)
        notes.append(f"--init-from: students and teachers from {parent.path}" if from_teachers else
                     f"--init-from: students from {parent.path}; it has no teachers, so the teachers start as "
                     "copies of the students")
    else:
        notes.append(f"--init-from: students from {parent.path}")
    return notes


def parent_record(path: str) -> dict:
    """What the new model's provenance says about its parent (the folder may be gone by then: path only)."""
    rec = {"path": os.path.abspath(path)}
    try:
        meta = read_model_json(path)
        with open(os.path.join(path, WEIGHTS_FILE), "rb") as f:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            rec["weights_sha256"] = h.hexdigest()
    except (ModelPackageError, OSError):
        return rec
    prov = meta.get("provenance") or {}
    rec.update(name=meta.get("name"), method=meta.get("method"), created=prov.get("created"),
               iterations=prov.get("iterations"), counts=prov.get("counts"),
               best_mean_dice=(meta.get("metrics") or {}).get("best_mean_dice"),
               parent_model=(prov.get("parent_model") or {}).get("path"))
    return rec
