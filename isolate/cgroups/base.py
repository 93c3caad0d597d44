"""The one interface both cgroup backends implement (youki's libcgroups has the same split).

A backend knows where a hierarchy lives and how a limit is spelled there; a ``Cgroup`` is
one sandbox's group: created with its limits before the command starts, joined by the
child itself before it execs, read and removed after the run.
"""

from __future__ import annotations

import errno
import os
import time

from isolate.errors import HostSupportError, IsolateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.limits import Limits

DEFAULT_PARENT = "isolate"


class CgroupStats:
    """What the kernel counted for one sandbox.  ``None`` where the backend cannot tell."""

    __slots__ = (
        "memory_peak", "oom_kills", "cpu_user", "cpu_system", "nr_throttled", "throttled_time",
        "pids_peak", "pids_limit_hits",
    )  # fmt: skip

    def __init__(self, **values: float | int | None) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))

    def to_dict(self) -> dict[str, float | int | None]:
        return {name: getattr(self, name) for name in self.__slots__}


class Cgroup:
    """One sandbox's cgroup, in one directory per hierarchy (one in v2, several in v1)."""

    version = ""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs  # controller (or "unified") -> directory

    def join_files(self) -> list[str]:
        """The files the child writes "0" (itself) into before it execs (see join_files)."""
        return join_files(self.version, self.dirs)

    def apply(self, limits: Limits) -> list[tuple[str, str]]:
        """Write the limits; returns the (file, value) pairs written, in order."""
        raise NotImplementedError

    def cpu_usage(self) -> float:
        """CPU seconds used so far by every process of the group (for --time)."""
        raise NotImplementedError

    def memory_current(self) -> int | None:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError

    def kill_all(self) -> None:
        """SIGKILL every process in the group, including ones that fork meanwhile."""
        raise NotImplementedError

    def remove(self) -> None:
        """rmdir every directory; waits a little for exiting processes to leave."""
        deadline = time.monotonic() + 2.0
        for directory in sorted(set(self.dirs.values()), key=len, reverse=True):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: a killed process has not left yet (its exit is asynchronous).
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise IsolateError(f"cannot remove cgroup {directory}: {exc.strerror}") from None
                    if time.monotonic() > deadline - 1.0:
                        self.kill_all()
                    time.sleep(0.002)


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
