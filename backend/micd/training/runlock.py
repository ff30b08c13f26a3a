"""One trainer per run folder: an advisory lock on RUN_DIR/train.lock that the OS drops when its holder dies.

POSIX: `fcntl.flock` on the file. Windows: `msvcrt.locking` of one byte at LOCK_OFFSET, past the pid text that other
processes read (Windows locks are mandatory for the bytes they cover). The file holds the holder's pid; it stays
after the run, and a file nobody holds the lock on is free, so a killed trainer never blocks a resume. The Slicer
job runner probes the same lock (MICDCommon/MICDCommon/runlock.py) to tell a running job from a lost one.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from micd.contract import LOCK_FILE, LOCK_OFFSET
from micd.contract import LOCK_PID_WIDTH as PID_WIDTH
HOLDER_VARIABLE = "MICD_RUN_LOCK_HOLDER"  # set by `micd train --nproc` for its ranks: their launcher holds the lock


class RunFolderBusy(Exception):
    def __init__(self, run_dir: str, pid: Optional[int]):
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"{run_dir} is in use by a running `micd train` ({who})")
        self.run_dir, self.pid = run_dir, pid


class RunLock:
    """`with RunLock(run_dir):` holds the run folder for this process, or raises RunFolderBusy."""

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock, then write this process's pid. A refused acquire leaves the file as it was (bytes and
        mtime): it is opened without O_TRUNC and written only once the lock is held."""
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        for _ in range(20):  # a probe of the job runner holds it for an instant
            if _try_lock(fd):
                break
            time.sleep(0.05)
        else:
            os.close(fd)
            raise RunFolderBusy(self.run_dir, read_holder_pid(self.path))
        try:  # the holder only: the pid in fixed width, and anything after it cut off
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).ljust(PID_WIDTH).encode())
            if os.fstat(fd).st_size > PID_WIDTH:  # not written by micd; Windows: the locked byte lies past the end
                os.ftruncate(fd, PID_WIDTH)
        except OSError:  # a full disk: the lock is what counts, the pid is for people (the probe then reads none)
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            if os.name == "nt":  # Windows unlocks a closed file's bytes only "eventually"
                import msvcrt
                os.lseek(self.fd, LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
            os.close(self.fd)  # POSIX: closing drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder_pid(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            return int(f.read(PID_WIDTH).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _try_lock(fd: int) -> bool:
    try:
        if os.name == "nt":
            import msvcrt
            os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
