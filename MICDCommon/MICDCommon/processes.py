"""Operating-system process helpers: start a process in its own group, check that a pid is still our job, and end
a whole process tree (psutil when installed, otherwise process groups and /proc on POSIX)."""

import os
import signal
import subprocess
import time

try:  # optional: better tree handling, and the only way on Windows besides taskkill
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


def new_group_popen_kwargs():
    """Popen keyword arguments that put the child in a new process group/session, detached from our terminal."""
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def _proc_stat(pid):
    """Fields of /proc/<pid>/stat after the command name, or None (not Linux, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def is_alive(pid):
    """True while the process exists and is not a zombie (an exited child nobody has waited for yet)."""
    if not pid or pid <= 0:
        return False
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")
    if os.name == "nt":  # pragma: no cover
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_marker(pid):
    """A value that changes when a pid is reused: the process start time, as text (None if unknown)."""
    if psutil is not None:
        try:
            return f"psutil:{psutil.Process(pid).create_time():.2f}"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    stat = _proc_stat(pid)
    return f"proc:{stat[19]}" if stat is not None and len(stat) > 19 else None


def _same_start(recorded, current):
    """Markers of the same kind must agree (psutil seconds within 1 s, /proc ticks exactly); markers of different
    kinds (psutil installed or removed since) or unknown ones cannot tell, so they do not veto."""
    if not recorded or not current or recorded.split(":")[0] != current.split(":")[0]:
        return True
    if recorded.startswith("psutil:"):
        return abs(float(recorded[7:]) - float(current[7:])) < 1.0
    return recorded == current


def is_same_process(pid, recorded_marker):
    """Is `pid` alive and still the process we started (not a later process that got the same pid)?"""
    return is_alive(pid) and _same_start(recorded_marker, start_marker(pid))


def descendants(pid):
    """Pids of all processes below `pid` (children, grandchildren, ...)."""
    if psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    parents = {}
    if not os.path.isdir("/proc"):
        return []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def group_members(pgid):
    """Pids whose process group is `pgid` (POSIX with /proc only; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def _own_group(pgid):
    try:
        return pgid == os.getpgid(0)
    except (AttributeError, OSError):  # pragma: no cover
        return False


def _signal_tree(pid, pids, sig):
    """Send `sig` to the job's process group (when it leads its own group) and to every pid in `pids`."""
    if os.name != "nt":
        try:
            if os.getpgid(pid) == pid and not _own_group(pid):
                os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    for p in pids:
        try:
            if psutil is None:
                os.kill(p, sig)
            elif sig == _kill_signal():
                psutil.Process(p).kill()
            else:
                psutil.Process(p).terminate()
        except Exception:  # noqa: BLE001 - the process may be gone already
            pass


def _kill_signal():
    return getattr(signal, "SIGKILL", signal.SIGTERM)


def request_stop(pid):
    """Ask the job and everything it started to stop (SIGTERM; the trainer saves a checkpoint first).

    Returns the pids signalled, to be killed by `force_kill` if they are still alive after a grace period."""
    pids = [pid] + descendants(pid)
    if os.name == "nt":  # pragma: no cover - Windows has no SIGTERM: Ctrl+Break reaches the new process group
        try:
            os.kill(pid, signal.CTRL_BREAK_EVENT)
        except OSError:
            pass
        return pids
    _signal_tree(pid, pids, signal.SIGTERM)
    return pids


def force_kill(pid, pids):
    """Kill whatever of the tree is still alive (SIGKILL / TerminateProcess)."""
    if os.name == "nt" and psutil is None:  # pragma: no cover
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True)
        return
    alive = [p for p in set(pids) | set(descendants(pid)) if is_alive(p)]
    _signal_tree(pid, alive, _kill_signal())


def tree_alive(pid, pids):
    """Is any process of the job still running (the leader, a recorded pid, or a member of its group)?"""
    if any(is_alive(p) for p in [pid, *pids]):
        return True
    return os.name != "nt" and bool(group_members(pid))


def stop_tree(pid, grace_s=30.0, interval=0.1):
    """SIGTERM the whole tree, wait up to `grace_s`, then kill what is left. Returns True when all is gone."""
    pids = request_stop(pid)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not tree_alive(pid, pids):
            return True
        time.sleep(interval)
    force_kill(pid, pids)
    time.sleep(interval)
    return not tree_alive(pid, pids)
