"""When this process started, from the operating system (Linux /proc, Windows GetProcessTimes), without psutil.

The time budget counts from the user's command, start-up and imports included; psutil is not a dependency, so the
clock is read where the platform offers it, and from the import of this package (the closest later point) elsewhere.
"""

from __future__ import annotations

import os
import sys
import time

_IMPORTED = time.time()  # fallback: the first import of micd's budget code, a moment after the process started


def _linux_start() -> float:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) may hold spaces and parentheses: fields after the last ')' start at field 3
    ticks = int(stat.rsplit(b")", 1)[1].split()[19])  # field 22, starttime in clock ticks after boot
    with open("/proc/stat", "rb") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _windows_start() -> float:
    import ctypes
    from ctypes import wintypes

    created, exited, kernel, user = (wintypes.FILETIME() for _ in range(4))
    k32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    if not k32.GetProcessTimes(k32.GetCurrentProcess(), ctypes.byref(created), ctypes.byref(exited),
                               ctypes.byref(kernel), ctypes.byref(user)):
        raise OSError("GetProcessTimes failed")
    hundred_ns = (created.dwHighDateTime << 32) | created.dwLowDateTime  # since 1601-01-01
    return hundred_ns / 1e7 - 11644473600.0


def process_start_time() -> float:
    """Seconds since the epoch at which this process started (at worst, when this module was first imported)."""
    try:
        if sys.platform.startswith("linux"):
            t = _linux_start()
        elif sys.platform == "win32":
            t = _windows_start()
        else:
            return _IMPORTED
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return _IMPORTED
    # a clock stepped since boot makes /proc's answer wrong; never later than our own import, nor far before it
    return t if _IMPORTED - 3600 < t <= _IMPORTED else _IMPORTED
