"""The small Python API for Slicer's console and other programs: load a model, segment an array, evaluate.

Arrays are in SimpleITK/numpy order **(z, y, x)** (slice, row, column), which is also what Slicer's
`slicer.util.arrayFromVolume` returns (k, j, i). `spacing` and `origin` are in (x, y, z) order, as SimpleITK and
ITK report them, in mm, LPS physical space; `direction` is the 3x3 direction matrix, row-major (9 numbers or a 3x3
array; columns are the x, y, z axis directions). From Slicer (RAS), flip the first two rows of IJKToRAS to LPS.

`micd.api.train(...)` runs `micd train` in a child process (so a console or GUI stays in charge: signals, memory,
cancel) and returns the model folder.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from micd.model_package import ModelPackage, export_zip, import_zip, load_model_package  # noqa: F401 (re-export)

__all__ = ["train", "TrainingFailed", "load_model", "predict", "evaluate", "export_zip", "import_zip"]


def load_model(model_dir: str, device: str = "auto") -> ModelPackage:
    """Load and verify a model folder (raises `ModelPackageError` with a readable message); networks on `device`."""
    from micd.training.devices import resolve_device

    return load_model_package(model_dir, device=str(resolve_device(device)))


def _image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
           direction: Union[Sequence[float], np.ndarray]) -> sitk.Image:
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"image_array must be 3D (z, y, x), got shape {a.shape}")
    img = sitk.GetImageFromArray(a)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in np.asarray(direction, float).reshape(9)])
    return img


def predict(image_array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
            direction: Union[Sequence[float], np.ndarray], model: Union[ModelPackage, str], device: str = "auto",
            tta: bool = False, branches: str = "students", return_uncertainty: bool = False,
            max_buffer_gib: Optional[float] = None, amp: str = "auto"
            ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Segment one volume in memory; returns a label array with `image_array`'s shape (z, y, x), uint8 (uint16 for
    label values above 255), and with `return_uncertainty` also the normalised entropy map (float32, same shape).
    `model` is a loaded `ModelPackage` or a model folder path; `amp` as `micd predict --amp`."""
    from micd.inference.predictor import PredictOptions, predict_image

    package = model if isinstance(model, ModelPackage) else load_model(model, device)
    opts = PredictOptions(branches=branches, tta=tta, device=device, uncertainty=return_uncertainty,
                          max_buffer_gib=max_buffer_gib, amp=amp)
    result = predict_image(_image(image_array, spacing, origin, direction), package, opts)
    labels = sitk.GetArrayFromImage(result.labels)
    if return_uncertainty:
        return labels, sitk.GetArrayFromImage(result.uncertainty)
    return labels


def evaluate(pred_array: np.ndarray, label_array: np.ndarray, spacing: Sequence[float],
             labels: Optional[Dict[int, str]] = None) -> dict:
    """Dice, HD95 and ASD (mm) of one case from (z, y, x) arrays; `spacing` in (x, y, z) order like `predict`.
    Returns the same structure as `micd evaluate`'s JSON (one case named "case"). Labels default to every non-zero
    value in either array."""
    from micd.evaluation.evaluate import evaluate_arrays

    if labels is None:
        values = np.union1d(np.unique(pred_array), np.unique(label_array))
        labels = {int(v): f"label_{int(v)}" for v in values if v}
    return evaluate_arrays(np.asarray(pred_array), np.asarray(label_array), tuple(reversed(list(spacing))), labels)


# --- training -------------------------------------------------------------------------------------------------------
class TrainingFailed(RuntimeError):
    """`micd train` ended without a model; `event` is its `error` event (kind, message, hint) when it wrote one."""

    def __init__(self, message: str, event: Optional[dict] = None, returncode: Optional[int] = None):
        super().__init__(message)
        self.event = event or {}
        self.returncode = returncode


def train_command(dataset: str, out: str, **options) -> list:
    """The `micd train` argument list for keyword options named like the long flags (patch_size=(16, 32, 16),
    resume=True, mask_shared=False, ...).

    Each option is checked against `micd train`'s own options (micd.training.options): an unknown name is a
    TypeError, not a flag passed on silently. None leaves a flag out; False becomes the `--no-...` form where the
    flag has one (so it overrides a saved or --config value), and is left out for on-only flags whose default is
    off; False for an on-only flag that defaults to on cannot be said and is refused.
    """
    import argparse

    from micd.training.options import TrainOptions, add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    defaults = TrainOptions().to_dict()
    args = ["train", "--dataset", str(dataset), "--out", str(out)]
    for key, value in options.items():
        if key not in actions or key in ("dataset", "out"):
            raise TypeError(f"micd train has no option {key!r}; see `micd train --help`")
        action = actions[key]
        flag = action.option_strings[0]
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                args.append(flag)
            elif defaults.get(key):
                raise ValueError(f"{key}=False: micd train has no flag to turn {flag} off")
        elif isinstance(value, bool):
            raise TypeError(f"{key} takes a value, not {value!r}")
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def train(dataset: str, out: str, method: str = "micd", on_event=None, python: Optional[str] = None,
          **options) -> str:
    """Train with `micd train` in a child process and return the path of the model folder.

    `on_event(dict)` receives every progress event as it arrives (see `micd.events`). Options are the long flags of
    `micd train` as keywords, e.g. `train("ds.json", "run", iterations=2000, patch_size=(32, 64, 64), device="cuda")`.
    Raises `TrainingFailed` (with the error event) when the run ends without a model.
    """
    import json
    import os
    import subprocess
    import sys

    cmd = [python or sys.executable, "-m", "micd", *train_command(dataset, out, method=method, **options)]
    error, done = None, None
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # the child's lines are read as UTF-8 whatever the locale
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, encoding="utf-8", errors="replace", bufsize=1, env=env) as proc:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "error":
                error = event
            elif event.get("event") == "done":
                done = event
            if on_event is not None:
                on_event(event)
    if done is None:
        msg = error["message"] if error else f"micd train exited with code {proc.returncode}"
        raise TrainingFailed(msg, error, proc.returncode)
    return done["model"]
