"""micd keeps a training step's freed buffers in the process (glibc's mmap and trim thresholds raised): the same
allocate-and-free loop then stops faulting pages in every time."""

import os
import resource
import subprocess
import sys

import pytest

LOOP = r"""
import resource, sys
from micd.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
import numpy as np
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[3])):  # a step's pattern: large buffers allocated, written, freed
    buffers = [np.ones(int(sys.argv[2]), dtype=np.float32) for _ in range(4)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# 6 MB buffers: above glibc's default mmap threshold, which grows only after the first frees (measured 450,053
# faults by default, 1,759 kept); 40 MB ones: above its largest threshold, mapped afresh every time unless mmap is
# off (34,080 faults by default and with the thresholds alone, 1,123 with mmap off; issue 32's step has such buffers)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("floats, loops, least", [(1_500_000, 200, 100_000), (10_000_000, 30, 30_000)])
def test_freed_step_buffers_stay_in_the_process(floats, loops, least):
    def faults(mode):
        env = dict(os.environ, MICD_KEEP_FREED_MEMORY="1")
        out = subprocess.run([sys.executable, "-c", LOOP, mode, str(floats), str(loops)], capture_output=True,
                             encoding="utf-8", timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())

    default, kept = faults("default"), faults("keep")
    assert default > least and kept < default / 20, (default, kept)


def test_it_can_be_turned_off(monkeypatch):
    from micd.allocator import keep_freed_memory

    monkeypatch.setenv("MICD_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
