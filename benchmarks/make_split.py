"""Write the fixed, recorded hippocampus split used by the benchmark and the demo (benchmarks/splits/hippocampus.json).

260 cases, shuffled once with a fixed seed: 50 test cases, a pool of 10 labeled candidates (the 2- and 5-labeled
settings take the first 2 and 5), and 200 unlabeled cases whose labels are never read. Re-running reproduces the
same file; it is committed so the split is recorded, not recomputed.
"""

import json
import os
import sys

import numpy as np

SEED = 2026


def main(shared: str, out: str) -> None:
    names = sorted(os.listdir(os.path.join(shared, "data", "hippocampus", "imagesTr")))
    order = np.random.default_rng(SEED).permutation(len(names))
    shuffled = [names[i] for i in order]
    split = {"seed": SEED, "source": "shared/data/hippocampus", "test": sorted(shuffled[:50]),
             "labeled_pool": shuffled[50:60], "unlabeled": sorted(shuffled[60:260])}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(split, f, indent=1)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared"),
         os.path.join(here, "splits", "hippocampus.json"))
