"""Shared fixtures.  Every test runs as root on the real kernel and is checked for leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate.config import DEFAULT_STATE_DIR

ISOLATE_BIN = os.path.join(os.path.dirname(sys.executable), "isolate")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("isolate's tests create real namespaces and mounts: run them as root", returncode=2)


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f]


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
    """Everything in isolate's state directory but its two permanent, empty directories."""
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
    """Children of this test process other than isolate's idle spawn helpers."""
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
                    continue  # forked once, kept to clone sandboxes built ahead (isolate/zygote.py)
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


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After every test: no new host mount, open descriptor, state entry, cgroup or child process."""
    mounts, fds, state = host_mounts(), open_fds(), state_entries()
    yield
    assert sandbox_cgroups() == [], "a sandbox cgroup was left behind"
    assert host_mounts() == mounts, "a mount leaked onto the host"
    assert state_entries() - state == set(), "isolate left files in its state directory"
    leaked = open_fds() - fds - helper_sockets()
    assert not leaked, f"descriptors leaked: {[os.readlink(f'/proc/self/fd/{fd}') for fd in leaked]}"
    assert sandbox_children() == [], "a sandbox process outlived its run"


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem built with isolate's own builder (needs busybox-static)."""
    from isolate.images.busybox import build_busybox_rootfs

    dest = tmp_path_factory.mktemp("busybox") / "root"
    build_busybox_rootfs(str(dest))
    return dest


@pytest.fixture()
def marker() -> str:
    """A word unique to this test, to find its processes on the host."""
    return "isolate-test-" + os.urandom(4).hex()


def cli(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ISOLATE_BIN, *args], input=input, capture_output=True, timeout=timeout)


def require(binary: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is needed by this test; .ci/run installs it"
    return path
