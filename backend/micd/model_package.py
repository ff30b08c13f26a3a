"""The model folder: `model.json` (what the model is) + `weights.safetensors` (tensors only, no pickle).

Schema version 1 (`MODEL_SCHEMA_VERSION`). `model.json` fields:

- `format`: "micd-model"; `schema_version`: 1
- `labels`: {"1": "liver", ...} (background 0 is implicit); `colors`: {"1": [r, g, b] in 0..1, ...}
- `channels`: the label value of each network output, [0, 1, 2, 5, ...]: background, then the labels' values in
  ascending order, so sparse values cost no outputs (data/label_channels.py). Absent in older folders, where output
  k meant value k.
- `network`: `NetworkConfig` fields (architecture, in/out channels, filters, normalization, dropout, and for
  thick-slice data `strides`: per downsampling stage the stride along z, y, x; absent means 2 everywhere)
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

from micd.atomicfile import replacing
from micd.contract import (MODEL_FORMAT, MODEL_JSON, MODEL_SCHEMA_VERSION, WEIGHTS_FILE,  # noqa: F401
                           model_json_problem)
from micd.data.io import default_color
from micd.data.label_channels import LabelChannels
from micd.diskfull import disk_guard
from micd.data.preprocess import PreprocessPlan
from micd.nets.vnet import NetworkConfig, VNet



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
    def channels(self) -> LabelChannels:
        return LabelChannels.from_model(self.meta.get("channels"), self.network_config.out_channels)

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
    """Write a model folder atomically: build it in a temporary sibling folder, then rename it into place.
    A full disk raises DiskFull and leaves an existing folder at `path` as it was."""
    from safetensors.torch import save

    meta = dict(meta)
    meta.update(format=MODEL_FORMAT, schema_version=MODEL_SCHEMA_VERSION, branches=list(networks))
    meta.setdefault("colors", {str(v): list(default_color(int(v))) for v in meta["labels"]})
    tensors = {}
    for branch, net in networks.items():
        for k, v in net.state_dict().items():
            tensors[f"{branch}.{k}"] = v.detach().to("cpu").contiguous()
    parent = os.path.dirname(os.path.abspath(path))
    with disk_guard(path):
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".model-", dir=parent)
        try:
            # Python writes the bytes, so that a full disk is an OSError (safetensors' own writer hides the errno)
            with open(os.path.join(tmp, WEIGHTS_FILE), "wb") as f:
                f.write(save(tensors, metadata={"format": MODEL_FORMAT}))
            with open(os.path.join(tmp, MODEL_JSON), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _move_into_place(tmp, path)


def _move_into_place(tmp: str, dest: str) -> str:
    """Rename a finished temporary folder to `dest`; an existing `dest` is moved aside first, then removed."""
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=".replaced-", dir=os.path.dirname(os.path.abspath(dest)))
        os.rmdir(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


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
    problem = model_json_problem(meta)
    if problem:
        raise ModelPackageError(f"{mj}: {problem}")
    try:
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        NetworkConfig.from_dict(meta["network"])
        PreprocessPlan.from_dict(meta["preprocessing"])
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelPackageError(f"{mj}: invalid field value ({e})") from None
    if not labels or 0 in labels:
        raise ModelPackageError(f"{mj}: 'labels' must name the foreground label values (1, 2, ...), not 0")
    outputs = meta["network"].get("out_channels")
    if "channels" not in meta:  # folders written before the channel map: one output per value up to the largest
        if outputs != max(labels) + 1:
            raise ModelPackageError(f"{mj}: the network has {outputs} outputs but the labels go up to {max(labels)}")
        return meta
    try:
        channels = LabelChannels.from_model(meta["channels"], outputs)
    except (TypeError, ValueError) as e:
        raise ModelPackageError(f"{mj}: invalid 'channels' ({e})") from None
    if set(channels.values[1:]) != set(labels):
        raise ModelPackageError(f"{mj}: 'channels' {list(channels.values)} do not list the labels' values "
                                f"{sorted(labels)} after background 0")
    if outputs != channels.count:
        raise ModelPackageError(f"{mj}: the network has {outputs} outputs but 'channels' lists {channels.count}")
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
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            first = (lines[1] if len(lines) > 1 else lines[0]) if lines else "mismatch"  # skip torch's header line
            raise ModelPackageError(f"{wf}: weights of {branch!r} do not match the declared network "
                                    f"({config.architecture}, filters={config.filters}, "
                                    f"out_channels={config.out_channels}): {first[:300]}") from None
        networks[branch] = net.eval().to(device)
    return ModelPackage(path=os.path.abspath(path), meta=meta, networks=networks)


# --- zip export / import (used by the Slicer model registry) ---------------------------------------------------------

ZIP_MAX_BYTES = 8 * 1024 ** 3  # refuse archives that would unpack to more than this (zip bombs)


def export_zip(model_dir: str, zip_path: str, overwrite: bool = False) -> str:
    """Zip a model folder whole (its regular files, relative paths, under no top folder); checks it first.

    An existing `zip_path` is only replaced when `overwrite=True`; the archive is written beside it first."""
    import zipfile

    read_model_json(model_dir)
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS_FILE)):
        raise ModelPackageError(f"{model_dir}: no {WEIGHTS_FILE}")
    zip_path = os.path.abspath(zip_path)
    if zip_path.startswith(os.path.abspath(model_dir) + os.sep):
        raise ModelPackageError(f"{zip_path}: a model cannot be zipped into its own folder; choose a path outside it")
    if os.path.exists(zip_path) and not overwrite:
        raise ModelPackageError(f"{zip_path}: already exists; remove it or export with overwrite=True")
    with replacing(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for root, dirs, files in os.walk(model_dir):
                dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.islink(full) or not os.path.isfile(full):
                        continue  # links could point outside the folder; they are not part of a model
                    z.write(full, os.path.relpath(full, model_dir).replace(os.sep, "/"))
    return zip_path


def import_zip(zip_path: str, dest_dir: str, overwrite: bool = False) -> str:
    """Unzip a model archive into `dest_dir` (the model folder to create) and verify it; returns `dest_dir`.

    Safe extraction: entries with absolute paths, `..`, drive letters or links are refused, as are archives that
    unpack to more than `ZIP_MAX_BYTES`. An archive whose files sit under one top folder is unpacked from inside it.
    An existing `dest_dir` is only replaced when `overwrite=True`; the archive is unpacked into a temporary sibling
    and checked with `load_model_package` (weights against network) before it is moved into place.
    """
    import stat
    import zipfile

    if os.path.exists(dest_dir) and not overwrite:
        raise ModelPackageError(f"{dest_dir}: already exists; remove it or import with overwrite=True")
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelPackageError(f"{zip_path}: not a readable zip archive ({e})") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        names = []
        for i in infos:
            n = i.filename.replace("\\", "/")
            parts = [p for p in n.split("/") if p not in ("", ".")]
            if n.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or not parts:
                raise ModelPackageError(f"{zip_path}: unsafe entry {i.filename!r} (absolute or outside the folder)")
            if stat.S_ISLNK(i.external_attr >> 16):
                raise ModelPackageError(f"{zip_path}: entry {i.filename!r} is a link; model archives hold files only")
            names.append(parts)
        if sum(i.file_size for i in infos) > ZIP_MAX_BYTES:
            raise ModelPackageError(f"{zip_path}: unpacks to more than {ZIP_MAX_BYTES // 1024 ** 3} GiB")
        tops = {p[0] for p in names}
        strip = 1 if len(tops) == 1 and all(len(p) > 1 for p in names) else 0
        if not any(p[strip:] == [MODEL_JSON] for p in names):
            raise ModelPackageError(f"{zip_path}: no {MODEL_JSON} in the archive; not a MICD model folder archive")
        parent = os.path.dirname(os.path.abspath(dest_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".import-", dir=parent)
        try:
            for info, parts in zip(infos, names):
                target = os.path.join(tmp, *parts[strip:])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            try:
                load_model_package(tmp)  # refuses a malformed or mismatched model before it is put in place
            except ModelPackageError as e:
                raise ModelPackageError(str(e).replace(tmp, zip_path)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _move_into_place(tmp, dest_dir)
