"""Probes of the host: mounts, descriptors, processes, cgroups and isolate's state directory.

Tests look with these before and after they run something, so every leak is found the same
way.  mountinfo is parsed here only (proc(5): the fields before " - ", then the filesystem type).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

from isolate.config import DEFAULT_STATE_DIR


class MountEntry(NamedTuple):
    """One line of /proc/self/mountinfo."""

    mount_id: str
    root: str  # the path inside the filesystem that is mounted
    point: str  # where, with octal escapes (\040 for a space) decoded
    options: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (see show_mountinfo, fs/proc_namespace.c)
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mountinfo() -> list[MountEntry]:
    """Every mount this process sees, in the kernel's order."""
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            entries.append(MountEntry(fields[0], _unescape(fields[3]), _unescape(fields[4]), fields[5],
                                      fields[dash + 1], fields[dash + 2]))  # fmt: skip
    return entries


def host_mounts() -> list[str]:
    """Each mount as "root point": what a leak check compares before and after."""
    return [f"{m.root} {m.point}" for m in mountinfo()]


def mount_points(under: str = "/") -> list[str]:
    """Mount points at or below ``under``."""
    base = under.rstrip("/")
    return [m.point for m in mountinfo() if not base or m.point == base or m.point.startswith(base + "/")]


def cgroup_mounts() -> list[str]:
    """Where the cgroup hierarchies (v1 and v2) are mounted."""
    return [m.point for m in mountinfo() if m.fstype in ("cgroup", "cgroup2")]


def open_fds() -> set[int]:
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    alive = set()
    for fd in listed:  # one of them was listdir's own, closed by now
        try:
            os.fstat(fd)
            alive.add(fd)
        except OSError:
            pass
    return alive


def helper_sockets() -> set[int]:
    """The sockets of idle spawn helpers and of the zygote: kept open on purpose for the next run."""
    from isolate.process import helper, zygote

    pool = helper.current_pool()
    found = {h.sock.fileno() for h in pool._idle} if pool is not None else set()
    return found | ({zygote.socket_fd()} - {-1})


# Made on first use and kept, like /run/runc: the tmpfs mount point and the lock directory.
PERMANENT = ("mnt", "locks", "sandboxes", "records.lock", "monitor.lock", "monitor.start", "monitor.log", "seccomp")


def state_entries(state_dir: str = DEFAULT_STATE_DIR) -> set[str]:
    """Everything in isolate's state directory but its permanent, empty directories."""
    found: set[str] = set()
    permanent = {os.path.join(state_dir, name) for name in PERMANENT}
    if os.path.isdir(state_dir):
        for dirpath, dirnames, filenames in os.walk(state_dir):
            if dirpath == os.path.join(state_dir, "seccomp"):
                continue  # compiled filters, cached on purpose
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if path not in permanent:
                    found.add(path)
    return found


def processes_matching(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (tests tag their commands with a unique word)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def sandbox_children() -> list[int]:
    """Children of this test process other than isolate's idle spawn helpers and its zygote."""
    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"isolate.process.helper" in f.read():
                    continue
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() == b"isolate-zygote":
                    continue  # forked once, kept to clone sandboxes built ahead (isolate/process/zygote.py)
            pids.append(int(entry))
        except OSError:
            pass
    return pids


def sandbox_cgroups() -> list[str]:
    """Cgroups below isolate's parent in every hierarchy: each belongs to a sandbox not yet removed."""
    from isolate import cgroups

    lay = cgroups.layout()
    found = []
    for mount in {*lay.v1_mounts.values(), *([lay.v2_mount] if lay.v2_mount else [])}:
        parent = os.path.join(mount, cgroups.DEFAULT_PARENT)
        if os.path.isdir(parent):
            found += [os.path.join(parent, d) for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))]
    return sorted(found)


def pids_in_cgroups(tops: list[str]) -> set[int]:
    """The processes in these cgroup directories and every group below them."""
    pids: set[int] = set()
    for top in tops:
        for dirpath, _, _ in os.walk(top):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
    return pids


def remove_cgroup_trees(tops: list[str], before_each_try: Callable[[], None] | None = None,
                        timeout: float = 10.0) -> None:  # fmt: skip
    """SIGKILL every process in these cgroups and below, then rmdir them bottom-up in every
    hierarchy; again until they are gone (a killed task leaves its group a moment later).

    ``before_each_try``: what must happen first each time, e.g. thawing a frozen group, whose
    tasks take no SIGKILL until thawed (cgroup v1 freezer).
    """
    deadline = time.monotonic() + timeout
    while tops:
        if before_each_try is not None:
            before_each_try()
        for pid in pids_in_cgroups(tops):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        busy = []
        for top in tops:
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError:
                    busy.append(top)
        tops = sorted(set(busy))
        if tops:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot remove the cgroups {tops}")
            time.sleep(0.05)


def reap_children() -> None:
    """Reap this process's exited children without waiting: isolate-oci create leaves the
    container's process as its caller's child (CLONE_PARENT; no subreaper on these hosts)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
