"""Model folders that the backend itself writes and `micd predict` / `micd suggest` / `micd train --init-from` run:
random weights of a width-4 VNet (seconds to make, no training), for the Slicer-side tests of real subprocesses."""

import json
import subprocess
import sys

MAKE_MODEL = """
import json, sys, torch
from micd.data.preprocess import PreprocessPlan
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig, build_network
labels = json.loads(sys.argv[2])
torch.manual_seed(0)
cfg = NetworkConfig(out_channels=max(map(int, labels)) + 1, filters=4)
nets = {b: build_network(cfg).eval() for b in ("student_a", "student_b")}
save_model_package(sys.argv[1], dict(name=sys.argv[3], labels=labels, network=cfg.to_dict(),
                   preprocessing=PreprocessPlan().to_dict(), patch_size=[16, 32, 16], method="supervised",
                   default_ensemble=["student_a", "student_b"]), nets)
"""


def make_runnable_model(folder, name="Hippo", labels=None):
    """Write a runnable model folder with `labels` {value: name} (default anterior, posterior); returns it."""
    labels = {str(k): v for k, v in (labels or {1: "anterior", 2: "posterior"}).items()}
    subprocess.run([sys.executable, "-c", MAKE_MODEL, str(folder), json.dumps(labels), name], check=True,
                   timeout=300)
    return folder
