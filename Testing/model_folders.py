"""Model folders for the Slicer-side tests, written with the standard library: a model.json with every field
`micd predict` requires and a safetensors file whose header is complete (one small tensor per branch), so the
registry's own checks accept it. Its tensors do not fit a real network: the backend's load (`micd info --check`)
refuses it, which is what the tests of that check use; a folder that runs is made with micd itself."""

import json
import os
import struct

from MICDCommon.contract import MODEL_FORMAT, MODEL_JSON, MODEL_SCHEMA_VERSION, WEIGHTS_FILE

BRANCHES = ("student_a", "student_b")


def safetensors_bytes(tensors):
    """{name: number of float32 values} -> the bytes of a safetensors file holding them (all zeros)."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def model_meta(name, labels, colors=None, **extra):
    labels = {str(k): v for k, v in labels.items()}
    meta = {"format": MODEL_FORMAT, "schema_version": MODEL_SCHEMA_VERSION, "name": name, "labels": labels,
            "colors": {str(k): list(v) for k, v in (colors or {}).items()},
            "network": {"architecture": "vnet", "in_channels": 1, "out_channels": max(map(int, labels)) + 1,
                        "filters": 4, "normalization": "batchnorm"},
            "branches": list(BRANCHES), "default_ensemble": list(BRANCHES),
            "preprocessing": {"target_spacing": [1.0, 1.0, 1.0], "modality": "MR"}, "patch_size": [16, 32, 16]}
    meta.update(extra)
    return meta


def write_model_folder(folder, labels, colors=None, **extra):
    """A model folder the registry lists (see the module docstring); returns the folder."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    meta = model_meta(os.path.basename(folder), labels, colors, **extra)
    with open(os.path.join(folder, MODEL_JSON), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with open(os.path.join(folder, WEIGHTS_FILE), "wb") as f:
        f.write(safetensors_bytes({f"{b}.head.weight": 6 for b in meta["branches"]}))
    return folder
