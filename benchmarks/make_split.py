"""Write the fixed, recorded splits used by the benchmarks and the demo (benchmarks/splits/<dataset>.json).

hippocampus (260 cases), shuffled once with a fixed seed: 50 test cases, a pool of 10 labeled candidates (the 2- and
5-labeled settings take the first 2 and 5; the last 5 are the labeled validation set of `ssl_benchmark.py`), and 200
unlabeled cases whose labels are never read.

la (the Left Atrium set, 100 cases): the test set is UA-MT's `test.list` (20 cases), the one every semi-supervised
paper on this set reports. The labeled pool is 12 cases of `train.list`: its first 8 in the list's order (the 4- and
8-labeled settings take the first 4 and 8, as the papers' code does: `labeled_idxs = range(labelnum)`), then 4
validation cases drawn with the fixed seed from the other 72 (a fixed labeled validation set the papers do not have:
`ssl_benchmark.py` picks the best checkpoint on it); the remaining 68 are unlabeled, their labels never read. At 4
labeled the pool's cases 5-8 are neither labeled nor unlabeled, as the hippocampus pool's unused cases are.

Re-running reproduces the same files; they are committed so the splits are recorded, not recomputed.
Usage: make_split.py [SHARED [hippocampus|la ...]] (default: ../../shared, both datasets).
"""

import json
import os
import sys

import numpy as np

SEED = 2026
LA_LABELED = 8  # the pool's training candidates: the 4- and 8-labeled settings take the first 4 / 8
LA_VALIDATION = 4


def hippocampus(shared: str) -> dict:
    names = sorted(os.listdir(os.path.join(shared, "data", "hippocampus", "imagesTr")))
    order = np.random.default_rng(SEED).permutation(len(names))
    shuffled = [names[i] for i in order]
    return {"seed": SEED, "source": "shared/data/hippocampus", "test": sorted(shuffled[:50]),
            "labeled_pool": shuffled[50:60], "unlabeled": sorted(shuffled[60:260])}


def la(shared: str) -> dict:
    folder = os.path.join(shared, "data", "la")
    read = lambda name: [l.strip() for l in open(os.path.join(folder, name)) if l.strip()]  # noqa: E731
    train, test = read("train.list"), read("test.list")
    files = set(os.listdir(os.path.join(folder, "imagesTr")))
    assert len(train) == 80 and len(test) == 20 and not set(train) & set(test), "unexpected train.list / test.list"
    assert all(f"{n}.nii.gz" in files for n in train + test), "a listed case has no image"
    rest = train[LA_LABELED:]
    val = [rest[i] for i in sorted(np.random.default_rng(SEED).permutation(len(rest))[:LA_VALIDATION])]
    unlabeled = [n for n in rest if n not in val]
    f = lambda names: [f"{n}.nii.gz" for n in names]  # noqa: E731
    return {"seed": SEED, "source": "shared/data/la", "protocol": "test: UA-MT's test.list; labeled pool: the first "
            f"{LA_LABELED} cases of train.list, then {LA_VALIDATION} validation cases drawn with the seed from the "
            "rest; unlabeled: the other cases of train.list", "test": sorted(f(test)),
            "labeled_pool": f(train[:LA_LABELED] + val), "unlabeled": sorted(f(unlabeled))}


SPLITS = {"hippocampus": hippocampus, "la": la}


def main(shared: str, datasets) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for name in datasets:
        out = os.path.join(here, "splits", f"{name}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(SPLITS[name](shared), fh, indent=1)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared"), sys.argv[2:] or list(SPLITS))
