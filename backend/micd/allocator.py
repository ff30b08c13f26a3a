"""Keep freed memory in the process between training steps (glibc only).

A training step allocates and frees the same large activation buffers every iteration. glibc serves blocks above its
mmap threshold with fresh mappings and returns them on free, and trims the heap top beyond its trim threshold, so on
a CPU each step pays page faults and kernel time to get the same memory back (issue 32: 8.3 M page faults and 20 s of
kernel time in a 12-iteration MICD run, against 2.6 M and 11 s for a peer implementation). Raising both thresholds
keeps the pages of blocks below glibc's largest mmap threshold (32 MiB); a step's largest buffers reach it (a
16-channel float32 activation of four 32x64x64 patches is 32 MiB), and glibc maps those afresh whatever the
threshold, so mmap is also turned off (M_MMAP_MAX 0): every block then comes from the heap, whose freed top stays
up to the trim threshold (benchmarks/results/speed/train-micd-vs-peer.json, the width-16 14-class step in turn with
glibc's defaults: 3.51 s against 5.33, 0.8 M page faults per process against 7.3 M). CUDA memory has its own caching
allocator; this concerns host memory only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 ** 2  # glibc's largest allowed value on 64-bit: blocks below it come from the heap
TRIM_THRESHOLD = 1024 ** 3  # free heap top kept before it is returned to the system
VARIABLE = "MICD_KEEP_FREED_MEMORY"  # "0" turns it off


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and turn its mmap off for this process; True when glibc took all
    three settings."""
    if not sys.platform.startswith("linux") or os.environ.get(VARIABLE, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)), bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)),
                bool(mallopt(M_MMAP_MAX, 0))])
