"""Operating-system process helpers with the standard library only (Slicer bundles no psutil): start a process in
its own group without a console window, check that a pid is still our job, and end a whole process tree.

Linux reads /proc, other POSIX systems ask `ps`, Windows calls the Win32 API through ctypes. A polite stop is a
SIGTERM on POSIX; on Windows a GUI parent has no console to send Ctrl+Break through, so the job runner writes the
stop file the trainer watches (jobs.py) and this module only kills what is left after the grace period."""

import os
import signal
import subprocess
import time

WINDOWS = os.name == "nt"
CREATE_NO_WINDOW = 0x08000000
CREATE_NEW_PROCESS_GROUP = 0x00000200


def hidden_window_kwargs():
    """Popen/run keyword arguments that keep a console window from flashing up on Windows."""
    return {"creationflags": CREATE_NO_WINDOW} if WINDOWS else {}


def new_group_popen_kwargs():
    """Popen keyword arguments that put the child in a new process group/session, detached from our terminal."""
    if WINDOWS:
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def run(command, timeout=None, env=None):
    """subprocess.run for short helper commands: output captured and decoded as UTF-8, no window, no stdin."""
    return subprocess.run(list(command), capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, **hidden_window_kwargs())


# --- Windows ------------------------------------------------------------------------------------------------------
class _Win32:
    """The few kernel32 calls needed: is a process running, when did it start, its children, terminate it."""

    QUERY_LIMITED_INFORMATION, TERMINATE, STILL_ACTIVE = 0x1000, 0x0001, 259
    ACCESS_DENIED, SNAPPROCESS = 5, 0x00000002

    def __init__(self):
        import ctypes
        from ctypes import wintypes

        self.ctypes, self.wintypes = ctypes, wintypes
        self.kernel32 = k = ctypes.WinDLL("kernel32", use_last_error=True)
        k.OpenProcess.restype = k.CreateToolhelp32Snapshot.restype = wintypes.HANDLE
        k.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
        k.CloseHandle.argtypes = [wintypes.HANDLE]
        k.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
        k.GetProcessTimes.argtypes = [wintypes.HANDLE] + [ctypes.POINTER(wintypes.FILETIME)] * 4
        k.TerminateProcess.argtypes = [wintypes.HANDLE, wintypes.UINT]
        k.CreateToolhelp32Snapshot.argtypes = [wintypes.DWORD, wintypes.DWORD]

        class ProcessEntry(ctypes.Structure):
            _fields_ = [("dwSize", wintypes.DWORD), ("cntUsage", wintypes.DWORD),
                        ("th32ProcessID", wintypes.DWORD), ("th32DefaultHeapID", ctypes.c_void_p),
                        ("th32ModuleID", wintypes.DWORD), ("cntThreads", wintypes.DWORD),
                        ("th32ParentProcessID", wintypes.DWORD), ("pcPriClassBase", ctypes.c_long),
                        ("dwFlags", wintypes.DWORD), ("szExeFile", ctypes.c_wchar * 260)]

        self.ProcessEntry = ProcessEntry
        k.Process32FirstW.argtypes = k.Process32NextW.argtypes = [wintypes.HANDLE, ctypes.POINTER(ProcessEntry)]

    def _open(self, pid, access):
        return self.kernel32.OpenProcess(access, False, int(pid))

    def is_alive(self, pid):
        handle = self._open(pid, self.QUERY_LIMITED_INFORMATION)
        if not handle:
            return self.ctypes.get_last_error() == self.ACCESS_DENIED  # exists, but is not ours to query
        try:
            code = self.wintypes.DWORD()
            ok = self.kernel32.GetExitCodeProcess(handle, self.ctypes.byref(code))
            return bool(ok) and code.value == self.STILL_ACTIVE
        finally:
            self.kernel32.CloseHandle(handle)

    def start_time(self, pid):
        handle = self._open(pid, self.QUERY_LIMITED_INFORMATION)
        if not handle:
            return None
        try:
            times = [self.wintypes.FILETIME() for _ in range(4)]
            if not self.kernel32.GetProcessTimes(handle, *[self.ctypes.byref(t) for t in times]):
                return None
            return (times[0].dwHighDateTime << 32) | times[0].dwLowDateTime
        finally:
            self.kernel32.CloseHandle(handle)

    def parents(self):
        """{pid: parent pid} of every process."""
        snapshot = self.kernel32.CreateToolhelp32Snapshot(self.SNAPPROCESS, 0)
        if not snapshot or snapshot == self.wintypes.HANDLE(-1).value:
            return {}
        found = {}
        try:
            entry = self.ProcessEntry()
            entry.dwSize = self.ctypes.sizeof(self.ProcessEntry)
            more = self.kernel32.Process32FirstW(snapshot, self.ctypes.byref(entry))
            while more:
                found[int(entry.th32ProcessID)] = int(entry.th32ParentProcessID)
                more = self.kernel32.Process32NextW(snapshot, self.ctypes.byref(entry))
        finally:
            self.kernel32.CloseHandle(snapshot)
        return found

    def terminate(self, pid):
        handle = self._open(pid, self.TERMINATE)
        if handle:
            try:
                self.kernel32.TerminateProcess(handle, 1)
            finally:
                self.kernel32.CloseHandle(handle)


_win32 = []


def _windows():
    if not _win32:
        _win32.append(_Win32())
    return _win32[0]


# --- POSIX --------------------------------------------------------------------------------------------------------
def _proc_stat(pid):
    """Fields of /proc/<pid>/stat after the command name, or None (not Linux, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _ps(*fields, pid=None):
    """Rows of `ps -o FIELDS` for one pid or all processes (POSIX without /proc, e.g. macOS)."""
    try:
        result = run(["ps", "-o", ",".join(f + "=" for f in fields), *(["-p", str(pid)] if pid else ["-A"])],
                     timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split(None, len(fields) - 1) for line in result.stdout.splitlines() if line.strip()]


def _process_table():
    """[(pid, parent pid, process group, state letter)] of every process."""
    if WINDOWS:
        return [(pid, parent, 0, "R") for pid, parent in _windows().parents().items()]
    if os.path.isdir("/proc"):
        rows = []
        for entry in os.listdir("/proc"):
            stat = _proc_stat(entry) if entry.isdigit() else None
            if stat is not None:
                rows.append((int(entry), int(stat[1]), int(stat[2]), stat[0]))
        return rows
    return [(int(r[0]), int(r[1]), int(r[2]), r[3][:1]) for r in _ps("pid", "ppid", "pgid", "stat") if len(r) == 4]


# --- what the job runner uses --------------------------------------------------------------------------------------
def is_alive(pid):
    """True while the process exists and is not a zombie (an exited child nobody has waited for yet)."""
    if not pid or pid <= 0:
        return False
    if WINDOWS:
        return _windows().is_alive(pid)
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    rows = _ps("stat", pid=pid)
    return not (rows and rows[0][0].startswith("Z"))


def start_marker(pid):
    """A value that changes when a pid is reused: the process start time, as text (None if unknown)."""
    if WINDOWS:
        started = _windows().start_time(pid)
        return f"win:{started}" if started else None
    stat = _proc_stat(pid)
    if stat is not None:
        return f"proc:{stat[19]}" if len(stat) > 19 else None
    rows = _ps("lstart", pid=pid)
    return f"ps:{' '.join(rows[0])}" if rows else None


def _same_start(recorded, current):
    """Markers of the same kind must agree; markers of different kinds (a record written by another version) or
    unknown ones cannot tell, so they do not veto."""
    if not recorded or not current or recorded.split(":")[0] != current.split(":")[0]:
        return True
    return recorded == current


def is_same_process(pid, recorded_marker):
    """Is `pid` alive and still the process we started (not a later process that got the same pid)?"""
    return is_alive(pid) and _same_start(recorded_marker, start_marker(pid))


def descendants(pid):
    """Pids of all processes below `pid` (children, grandchildren, ...)."""
    children = {}
    for p, parent, _group, _state in _process_table():
        if p != parent:
            children.setdefault(parent, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def group_members(pgid):
    """Living pids whose process group is `pgid` (POSIX; empty on Windows)."""
    if WINDOWS:
        return []
    return [p for p, _parent, group, state in _process_table() if group == pgid and state not in ("Z", "X")]


def _own_group(pgid):
    try:
        return pgid == os.getpgid(0)
    except (AttributeError, OSError):  # pragma: no cover
        return False


def _signal_tree(pid, pids, sig):
    """Send `sig` to the job's process group (when it leads its own group) and to every pid in `pids`."""
    try:
        if os.getpgid(pid) == pid and not _own_group(pid):
            os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:  # gone already
            pass


def request_stop(pid):
    """Ask the job and everything it started to stop (SIGTERM on POSIX; the trainer saves a checkpoint first; on
    Windows the stop file does it). Returns the pids of the tree, for `force_kill` after a grace period."""
    pids = [pid] + descendants(pid)
    if not WINDOWS:
        _signal_tree(pid, pids, signal.SIGTERM)
    return pids


def force_kill(pid, pids):
    """Kill whatever of the tree is still alive (SIGKILL / TerminateProcess)."""
    alive = [p for p in dict.fromkeys([*pids, *descendants(pid)]) if is_alive(p)]
    if WINDOWS:
        for p in alive:
            _windows().terminate(p)
        return
    _signal_tree(pid, alive, signal.SIGKILL)


def tree_alive(pid, pids):
    """Is any process of the job still running (the leader, a recorded pid, or a member of its group)?"""
    if any(is_alive(p) for p in [pid, *pids]):
        return True
    return bool(group_members(pid))


def stop_tree(pid, grace_s=30.0, interval=0.1):
    """Stop the whole tree politely, wait up to `grace_s`, then kill what is left. Returns True when all is gone."""
    pids = request_stop(pid)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not tree_alive(pid, pids):
            return True
        time.sleep(interval)
    force_kill(pid, pids)
    time.sleep(interval)
    return not tree_alive(pid, pids)
