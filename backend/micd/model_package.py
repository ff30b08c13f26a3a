"""The model folder: `model.json` (what the model is) + `weights.safetensors` (tensors only, no pickle).

Schema version 1 (`MODEL_SCHEMA_VERSION`). `model.json` fields:

- `format`: "micd-model"; `schema_version`: 1
- `labels`: {"1": "liver", ...} (background 0 is implicit); `colors`: {"1": [r, g, b] in 0..1, ...}
- `network`: `NetworkConfig` fields (architecture, in/out channels, filters, normalization, dropout)
- `branches`: names of the networks stored in the weights file, e.g. ["student_a", "student_b", "teacher_a",
  "teacher_b"]; tensor names in the weights file are "<branch>.<parameter name>"
- `default_ensemble`: the branches `micd predict` averages by default (e.g. the two students)
- `preprocessing`: `PreprocessPlan` fields; `patch_size`: [D, H, W] used in training (sliding-window ROI)
- `method`: training method; `provenance`: dataset counts, seed, iterations, device, wall time, package version,
  date; `metrics`: validation Dice per label and mean (best checkpoint)

Loading never executes code from the folder: JSON is parsed, tensors are read with safetensors, and the weights are
checked against the declared network before use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import torch

from micd.data.io import default_color
from micd.data.preprocess import PreprocessPlan
from micd.nets.vnet import NetworkConfig, VNet

MODEL_SCHEMA_VERSION = 1
MODEL_FORMAT = "micd-model"
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"


class ModelPackageError(Exception):
    """A model folder is missing, malformed, of an unknown version, or its weights do not match its network."""


@dataclass
class ModelPackage:
    """A loaded model folder: its description and its networks (eval mode, on the CPU)."""

    path: str
    meta: dict
    networks: Dict[str, VNet]

    @property
    def labels(self) -> Dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @property
    def colors(self) -> Dict[int, List[float]]:
        c = self.meta.get("colors") or {}
        return {v: list(c.get(str(v)) or default_color(v)) for v in self.labels}

    @property
    def plan(self) -> PreprocessPlan:
        return PreprocessPlan.from_dict(self.meta["preprocessing"])

    @property
    def network_config(self) -> NetworkConfig:
        return NetworkConfig.from_dict(self.meta["network"])

    @property
    def patch_size(self) -> List[int]:
        return [int(v) for v in self.meta["patch_size"]]

    @property
    def default_ensemble(self) -> List[str]:
        return list(self.meta.get("default_ensemble") or [b for b in self.networks if b.startswith("student")])


def save_model_package(path: str, meta: dict, networks: Mapping[str, torch.nn.Module]) -> str:
    """Write a model folder atomically: build it in a temporary sibling folder, then rename it into place."""
    from safetensors.torch import save_file

    meta = dict(meta)
    meta.update(format=MODEL_FORMAT, schema_version=MODEL_SCHEMA_VERSION, branches=list(networks))
    meta.setdefault("colors", {str(v): list(default_color(int(v))) for v in meta["labels"]})
    tensors = {}
    for branch, net in networks.items():
        for k, v in net.state_dict().items():
            tensors[f"{branch}.{k}"] = v.detach().to("cpu").contiguous()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".model-", dir=parent)
    save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
    with open(os.path.join(tmp, MODEL_JSON), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    if os.path.isdir(path):
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def read_model_json(path: str) -> dict:
    """Parse and check `model.json` without touching the weights (what `micd info` needs)."""
    mj = os.path.join(path, MODEL_JSON)
    if not os.path.isdir(path):
        raise ModelPackageError(f"{path}: not a model folder (it does not exist or is not a folder)")
    if not os.path.isfile(mj):
        raise ModelPackageError(f"{path}: no {MODEL_JSON}; a model folder holds {MODEL_JSON} and {WEIGHTS_FILE}, "
                                "as written by `micd train` in RUN_DIR/model")
    try:
        with open(mj, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelPackageError(f"{mj}: malformed JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelPackageError(f"{mj}: not a MICD model description (\"format\" is not \"{MODEL_FORMAT}\")")
    version = meta.get("schema_version")
    if version != MODEL_SCHEMA_VERSION:
        raise ModelPackageError(f"{mj}: schema version {version!r} is not supported by this micd "
                                f"(it reads version {MODEL_SCHEMA_VERSION}); update micd or re-export the model")
    for key in ("labels", "network", "branches", "preprocessing", "patch_size"):
        if key not in meta:
            raise ModelPackageError(f"{mj}: required field {key!r} is missing")
    try:
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        NetworkConfig.from_dict(meta["network"])
        PreprocessPlan.from_dict(meta["preprocessing"])
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelPackageError(f"{mj}: invalid field value ({e})") from None
    if not labels or 0 in labels:
        raise ModelPackageError(f"{mj}: 'labels' must name the foreground label values (1, 2, ...), not 0")
    if meta["network"].get("out_channels") != max(labels) + 1:
        raise ModelPackageError(f"{mj}: the network has {meta['network'].get('out_channels')} outputs but the "
                                f"labels go up to {max(labels)}")
    return meta


def load_model_package(path: str, device: str = "cpu") -> ModelPackage:
    """Load and verify a model folder. Raises ModelPackageError with a message fit to show a user."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_model_json(path)
    wf = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(wf):
        raise ModelPackageError(f"{path}: no {WEIGHTS_FILE}")
    try:
        tensors = load_file(wf, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelPackageError(f"{wf}: not a readable safetensors file ({e})") from None
    config = NetworkConfig.from_dict(meta["network"])
    networks: Dict[str, VNet] = {}
    for branch in meta["branches"]:
        prefix = branch + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise ModelPackageError(f"{wf}: no weights for branch {branch!r} declared in {MODEL_JSON}")
        net = VNet(config)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else "mismatch"
            raise ModelPackageError(f"{wf}: weights of {branch!r} do not match the declared network "
                                    f"({config.architecture}, filters={config.filters}, "
                                    f"out_channels={config.out_channels}): {first[:300]}") from None
        networks[branch] = net.eval().to(device)
    return ModelPackage(path=os.path.abspath(path), meta=meta, networks=networks)
