"""Fixtures for the backend tests (helpers live in realdata.py, so the name does not clash with Testing/)."""

import os

import pytest

from realdata import HIPPO, SHARED, TINY, run_micd, write_dataset


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(HIPPO):
        pytest.fail(f"the shared data is missing: expected {HIPPO} (set MICD_SHARED to the shared folder)")
    return SHARED


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data):
    """A finished 12-iteration run (checkpoints at 5 and 10, then 12): (dataset, run folder, process)."""
    folder = tmp_path_factory.mktemp("train")
    ds = write_dataset(folder)
    run = os.path.join(folder, "run")
    p = run_micd("train", "--dataset", ds, "--out", run, "--iterations", "12", "--checkpoint-every", "5",
                 "--seed", "3", *TINY)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return ds, run, p


from trained import trained_model  # noqa: E402,F401  (the session's one trained model, see trained.py)
