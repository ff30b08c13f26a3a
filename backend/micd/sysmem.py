"""Memory the operating system can give this process now (Linux MemAvailable, else psutil when installed)."""

from __future__ import annotations

from typing import Optional


def available_ram() -> Optional[int]:
    """Available bytes of RAM, or None when this platform does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore
        return int(psutil.virtual_memory().available)
    except Exception:
        return None
