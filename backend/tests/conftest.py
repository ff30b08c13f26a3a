"""Fixtures for the backend tests (helpers live in realdata.py, so the name does not clash with Testing/)."""

import os

import pytest

from realdata import HIPPO, SHARED


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(HIPPO):
        pytest.fail(f"the shared data is missing: expected {HIPPO} (set MICD_SHARED to the shared folder)")
    return SHARED
