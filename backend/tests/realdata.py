"""Helpers for tests on the real data in ../shared/data: paths, small dataset files, running `micd`."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("MICD_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
HIPPO = os.path.join(SHARED, "data", "hippocampus")
CT_DIR = os.path.join(SHARED, "data", "ct_abdomen_example")
LABELS = {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}
TINY = ["--patch-size", "16", "32", "16", "--filters", "4", "--device", "cpu", "--num-threads", "1"]


def hippo_cases(start: int, n: int):
    names = sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))[start:start + n]
    return [{"image": os.path.join(HIPPO, "imagesTr", f), "label": os.path.join(HIPPO, "labelsTr", f)} for f in names]


def write_dataset(folder, n_lab=3, n_unlab=3, n_val=1, start=0) -> str:
    cases = hippo_cases(start, n_lab + n_unlab + n_val)
    d = {"labels": LABELS, "labeled": cases[:n_lab], "unlabeled": [c["image"] for c in cases[n_lab:n_lab + n_unlab]],
         "validation": cases[n_lab + n_unlab:]}
    path = os.path.join(str(folder), "dataset.json")
    with open(path, "w") as f:
        json.dump(d, f)
    return path


def micd_cmd(*args):
    return [sys.executable, "-m", "micd", *args]


def run_micd(*args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(micd_cmd(*args), capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env, **kw)


def losses_by_iter(events):
    out = {}
    for e in events:
        if e["event"] == "iteration":
            out[e["iter"]] = e["loss"]  # a resumed run repeats iterations after the checkpoint: keep the last
    return out
