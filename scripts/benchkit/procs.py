"""The benchmark's own processes: subreaping, reaping and waiting out what its sandboxes leave."""

from __future__ import annotations

import ctypes
import os
import signal
import time


def set_child_subreaper() -> bool:
    """Orphans of our descendants (runtime monitors, spawn helpers) are then reparented to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_descendants(grace: float = 5.0) -> list[str]:
    """Wait for every remaining child; kill (by pid) those still alive after the grace time."""
    deadline = time.monotonic() + grace
    killed: list[str] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        for pid in children():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                killed.append(f"{pid}: {cmdline}")
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + grace


def reap_orphans(keep: set[int]) -> None:
    """Reap exited processes reparented to us (we are a subreaper), leaving the workers' to Popen."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in keep:
            return
        os.waitpid(info.si_pid, 0)


def children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(entry))
    return out


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Reap (they are our children: we are a subreaper) or wait out the given processes."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    left.remove(pid)
            except ChildProcessError:
                if not os.path.exists(f"/proc/{pid}"):
                    left.remove(pid)
        if left:
            time.sleep(0.05)
    return left


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def pss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
