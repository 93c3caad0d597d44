"""The one interface both cgroup backends implement (youki's libcgroups has the same split).

A ``Backend`` knows where a hierarchy lives and how a limit is spelled there; a ``Cgroup``
is one sandbox's group: created with its limits before the command starts, joined by the
child itself before it execs, read and removed after the run.  isolate-oci drives the same
``Cgroup`` for a container's group (freeze, kill, remove), with directories the engine
chose and limits from config.json written by isolate/oci/cgroup.py.
"""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum (3 ms of every CLI start)
import abc
import errno
import os
import time

from isolate.config import DEFAULT_CGROUP_PARENT
from isolate.errors import HostSupportError, IsolateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from isolate.limits import Limits

# The cgroup below each hierarchy's root that holds isolate's groups: sandboxes
# (--cgroup-parent), OCI containers whose config names no path, and what isolate gc sweeps.
DEFAULT_PARENT = DEFAULT_CGROUP_PARENT
# How long kill_all waits for a freeze: past it, the signals go anyway (a process stuck in
# the kernel can hold a freeze up indefinitely).
KILL_FREEZE_TIMEOUT = 1.0


class CgroupStats:
    """What the kernel counted for one sandbox.  ``None`` where the backend cannot tell."""

    __slots__ = (
        "memory_peak", "oom_kills", "cpu_user", "cpu_system", "nr_throttled", "throttled_time",
        "pids_peak", "pids_limit_hits",
    )  # fmt: skip
    memory_peak: int | None
    oom_kills: int | None
    cpu_user: float | None
    cpu_system: float | None
    nr_throttled: int | None
    throttled_time: float | None
    pids_peak: int | None
    pids_limit_hits: int | None

    def __init__(self, **values: float | int | None) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))

    def to_dict(self) -> dict[str, float | int | None]:
        return {name: getattr(self, name) for name in self.__slots__}


class Cgroup(abc.ABC):
    """One group, in one directory per hierarchy (one in v2, several in v1).

    Both front ends drive it: the sandbox supervisor (created by a ``Backend`` from
    ``Limits``) and isolate-oci (directories the engine named, limits from config.json).
    """

    version = ""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs  # controller (or "unified") -> directory

    def join_files(self) -> list[str]:
        """The files the child writes "0" (itself) into before it execs (see join_files)."""
        return join_files(self.version, self.dirs)

    def attach(self, pid: int) -> None:
        """Move process ``pid`` in from outside (a child in a user namespace cannot write the
        host's cgroup files itself)."""
        for path in attach_files(self.dirs):
            write(path, pid)

    @abc.abstractmethod
    def describe(self, limits: Limits) -> list[tuple[str, str]]:
        """(path, value) of each write ``apply`` makes, in order; nothing is touched."""

    @abc.abstractmethod
    def apply(self, limits: Limits) -> list[tuple[str, str]]:
        """Write the limits; returns the (file, value) pairs written, in order."""

    @abc.abstractmethod
    def cpu_usage(self) -> float:
        """CPU seconds used so far by every process of the group (for --time)."""

    @abc.abstractmethod
    def memory_current(self) -> int | None: ...

    @abc.abstractmethod
    def stats(self) -> CgroupStats: ...

    def procs(self) -> list[int]:
        """The processes in the group now ([] once its directory is gone)."""
        d = self.dirs
        # v1: every hierarchy the group is in lists the same processes; pids and memory are
        # always joined (ACCOUNTING), an engine's path may have only some.
        directory = d.get("unified") or d.get("pids") or d.get("memory") or next(iter(d.values()))
        try:
            return [int(pid) for pid in read(os.path.join(directory, "cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    @abc.abstractmethod
    def can_freeze(self) -> bool:
        """Whether ``freeze`` can work here (v1 needs the freezer hierarchy joined)."""

    @abc.abstractmethod
    def freeze(self, frozen: bool = True, timeout: float = 5.0) -> None:
        """Freeze (or thaw) every process; waits up to ``timeout`` s for the kernel to finish."""

    @abc.abstractmethod
    def frozen(self) -> bool:
        """Whether the group is frozen or freezing (False when it cannot tell)."""

    def _kernel_kill(self) -> bool:
        """SIGKILL every process in one write, where the kernel offers it; False if it does not."""
        return False

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process in the group, including ones that fork meanwhile.

        Frozen first where possible, so nothing forks between reading the list and the
        signals, then thawed so they are delivered.  A group that was frozen already (a
        paused container) stays frozen, the signal pending until it is thawed; but not after
        SIGKILL, which a frozen v1 task does not act on until thawed (v2's freezer lets it
        through, as cgroup.kill does).
        """
        if sig == signal.SIGKILL and self._kernel_kill():
            return
        was_frozen = self.can_freeze() and self.frozen()
        hold = self.can_freeze() and not was_frozen
        if hold:
            self.freeze(True, timeout=KILL_FREEZE_TIMEOUT)
        try:
            for pid in self.procs():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if hold or (was_frozen and sig == signal.SIGKILL):
                self.freeze(False, timeout=KILL_FREEZE_TIMEOUT)

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir every directory; waits a little for exiting processes to leave, kills what
        stays after half of ``timeout``, and raises IsolateError for a group that remains."""
        paths = self.dirs.values()
        failed = remove_dirs(paths, busy=paths, timeout=timeout, on_busy=self.kill_all)
        if failed:
            directory, exc = failed[0]
            raise IsolateError(f"cannot remove cgroup {directory}: {exc.strerror}")


class Backend(abc.ABC):
    """Where one kind of hierarchy lives on this host, and how a sandbox's group is made there."""

    version = ""

    @abc.abstractmethod
    def available(self) -> set[str]:
        """The controllers this host offers to isolate's groups."""

    @abc.abstractmethod
    def dirs(self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False) -> dict[str, str]:
        """controller (or "unified") -> directory of the sandbox's group; nothing is touched."""

    @abc.abstractmethod
    def create(
        self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False
    ) -> tuple[Cgroup, list[tuple[str, str]]]:
        """Make the group with its limits; returns it and the (file, value) pairs written."""

    @abc.abstractmethod
    def open(self, dirs: dict[str, str]) -> Cgroup:
        """A handle on a group that exists (``dirs`` as ``dirs`` returned them)."""


def remove_dirs(
    paths: Iterable[str],
    busy: Iterable[str] = (),
    timeout: float = 2.0,
    on_busy: Callable[[], None] | None = None,
) -> list[tuple[str, OSError]]:
    """rmdir each of ``paths``, deepest first; returns those left, with the error.

    One of ``busy`` that still holds processes (EBUSY: a killed process has not left yet, as
    its exit is asynchronous) is retried until ``timeout``; ``on_busy`` is called once, half
    way, to end what stays.  Other directories (a parent shared with other groups) are left
    as they are at the first failure.
    """
    retry = set(busy)
    deadline = time.monotonic() + timeout
    failed = []
    for directory in sorted(set(paths), key=len, reverse=True):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                now = time.monotonic()
                if exc.errno != errno.EBUSY or directory not in retry or now > deadline:
                    failed.append((directory, exc))
                    break
                if on_busy is not None and now > deadline - timeout / 2:
                    on_busy()
                    on_busy = None
                time.sleep(0.002)
    return failed


def attach_files(dirs: dict[str, str]) -> list[str]:
    """The files a process's pid is written into to move it, from outside, into the group."""
    return sorted({f"{d}/cgroup.procs" for d in dirs.values()})


def join_files(version: str, dirs: dict[str, str]) -> list[str]:
    """The files a single-threaded process writes "0" into to move itself into its cgroups.

    On v1, the ``tasks`` file: moving the calling thread itself skips the global
    cgroup_threadgroup_rwsem that a cgroup.procs write takes (cgroup_procs_write_start), and
    the first writer of that lock after an idle spell waits for an RCU grace period: 5 to 12
    ms measured here, against 0.1 ms.  The caller has one thread, so the thread is the
    process.  v2 has no such file outside threaded subtrees: cgroup.procs.
    """
    name = "tasks" if version == "v1" else "cgroup.procs"
    return sorted({f"{d}/{name}" for d in dirs.values()})


def write(path: str, value: str | int) -> None:
    """One write(2) per value: the kernel parses each write as a whole (cgroup.procs: one pid)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostSupportError(f"{path}: no such cgroup file; is the controller enabled? (isolate doctor)") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise HostSupportError(f"cgroup: writing {value!r} to {path} failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def read(path: str) -> str:
    # Not open(): a text file object costs four more syscalls (fstat twice, the isatty
    # ioctl, lseek) and the io stack's objects, for a file read a few times every run.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    return data.decode().strip()


def read_keyed(path: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.events, pids.events) as a dict."""
    result = {}
    try:
        for line in read(path).splitlines():
            key, _, value = line.partition(" ")
            result[key] = int(value)
    except (OSError, ValueError):
        pass
    return result


def make_dir(path: str) -> None:
    """mkdir that explains the common failure (a read-only or absent cgroupfs)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostSupportError(
            f"cannot create cgroup {path}: {exc.strerror}; is cgroupfs mounted read-write?"
        ) from None
