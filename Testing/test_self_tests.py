"""The modules' own self-tests (what Slicer runs on "Reload and Test") run here as Slicer runs them: the module's
runTest builds its <Module>Test unittest.TestCase and calls its runTest (the tiny training is a real one)."""

import pytest
import slicer

import slicer_harness


@pytest.mark.parametrize("name", ["MICDSegmentation", "MICDTraining"])
def test_module_self_test_passes(scene, name):
    slicer_harness.load_module(name)
    slicer.selfTests[name](msec=0)
