"""Small helpers shared by the inference, evaluation and model-folder tests: a tiny random model folder and an
oblique, anisotropic, offset test image."""

import numpy as np
import SimpleITK as sitk
import torch

from micd.data.preprocess import PreprocessPlan
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig, build_network

LABELS = {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}


def make_model(path, filters=4, teachers=False, seed=0):
    torch.manual_seed(seed)
    cfg = NetworkConfig(out_channels=3, filters=filters)
    meta = dict(name="tiny", labels=LABELS, network=cfg.to_dict(), preprocessing=PreprocessPlan().to_dict(),
                patch_size=[16, 32, 16], method="micd", provenance={"seed": seed}, metrics={"best_mean_dice": 0.5},
                default_ensemble=["student_a", "student_b"], colors={"1": [1.0, 0.0, 0.0], "2": [0.0, 0.5, 1.0]})
    nets = {b: build_network(cfg).eval() for b in ("student_a", "student_b")}
    if teachers:
        nets.update({b: build_network(cfg).eval() for b in ("teacher_a", "teacher_b")})
    return save_model_package(str(path), meta, nets)


def oblique_image(shape=(30, 45, 40), seed=0) -> sitk.Image:
    """Non-identity direction (rotated about z), anisotropic spacing, non-zero origin; array shape (z, y, x)."""
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.normal(60, 20, shape).astype(np.float32))
    img.SetSpacing((1.1, 0.9, 1.7))
    img.SetOrigin((-12.5, 30.25, 7.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    return img


def assert_same_geometry(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    for name in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(a, name)(), getattr(b, name)(), atol=1e-5, err_msg=name)
