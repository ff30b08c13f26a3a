"""Is a trainer running in a run folder? A probe of the lock `micd train` holds on RUN_DIR/train.lock while it runs
(the protocol is defined in the backend's micd/training/runlock.py, its file name and offsets in micd/contract.py),
with the standard library only. The operating system drops the lock when the trainer dies, so the answer holds where
process ids cannot be trusted."""

import os

from .contract import LOCK_FILE, LOCK_OFFSET, LOCK_PID_WIDTH


def probe(run_dir):
    """(held, pid of the trainer that took it last), or None when no trainer ever took it in `run_dir`."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            pid = int(os.read(fd, LOCK_PID_WIDTH).decode().strip() or 0) or None
        except (OSError, ValueError):
            pid = None
        return not _lock_and_unlock(fd), pid
    finally:
        os.close(fd)


def _lock_and_unlock(fd):
    """Take the lock for an instant; False when a trainer holds it."""
    try:
        if os.name == "nt":
            import msvcrt
            os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
