"""cgroup v2, written directly on the unified hierarchy (Documentation/admin-guide/cgroup-v2.rst)."""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum (3 ms of every CLI start)
import os
import time

from isolate.cgroups.base import Cgroup, CgroupStats, make_dir, read, read_keyed, write
from isolate.errors import HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.limits import Limits

ACCOUNTING = ("memory", "cpu", "pids")


class V2Cgroup(Cgroup):
    version = "v2"

    @property
    def path(self) -> str:
        return self.dirs["unified"]

    def apply(self, limits: Limits) -> list[tuple[str, str]]:
        """Write the limits; returns the (path, value) pairs written, in order."""
        writes = self.describe(limits)
        for path, value in writes:
            write(path, value)
        return writes

    def planned(self, limits: Limits) -> list[tuple[str, str]]:
        """(file, value) pairs that ``apply`` writes, in order; nothing is touched."""
        writes: list[tuple[str, str]] = []
        if limits.memory is not None:
            writes.append(("memory.max", str(limits.memory)))
            # memory.swap.max counts swap alone; --memory-swap is memory plus swap (docker).
            swap = 0 if limits.memory_swap is None else limits.memory_swap - limits.memory
            parent = os.path.dirname(self.path)
            if limits.memory_swap is not None or os.path.exists(os.path.join(parent, "memory.swap.max")):
                writes.append(("memory.swap.max", str(swap)))
        if limits.cpus is not None:
            writes.append(("cpu.max", f"{round(limits.cpus * 100000)} 100000"))
        if limits.cpu_weight is not None:
            writes.append(("cpu.weight", str(limits.cpu_weight)))
        if limits.cpuset is not None:
            writes.append(("cpuset.cpus", limits.cpuset))
        if limits.pids is not None:
            writes.append(("pids.max", str(limits.pids)))
        if limits.io_weight is not None:
            writes.append(("io.weight", f"default {limits.io_weight}"))
        return writes

    def describe(self, limits: Limits) -> list[tuple[str, str]]:
        return [(os.path.join(self.path, name), value) for name, value in self.planned(limits)]

    def cpu_usage(self) -> float:
        return read_keyed(os.path.join(self.path, "cpu.stat")).get("usage_usec", 0) / 1e6

    def memory_current(self) -> int | None:
        try:
            return int(read(os.path.join(self.path, "memory.current")))
        except OSError:
            return None

    def stats(self) -> CgroupStats:
        cpu = read_keyed(os.path.join(self.path, "cpu.stat"))
        memory_events = read_keyed(os.path.join(self.path, "memory.events"))
        pids_events = read_keyed(os.path.join(self.path, "pids.events"))
        return CgroupStats(
            memory_peak=_read_int(os.path.join(self.path, "memory.peak")),  # Linux 5.19+
            oom_kills=memory_events.get("oom_kill"),
            cpu_user=cpu["user_usec"] / 1e6 if "user_usec" in cpu else None,
            cpu_system=cpu["system_usec"] / 1e6 if "system_usec" in cpu else None,
            nr_throttled=cpu.get("nr_throttled"),
            throttled_time=cpu["throttled_usec"] / 1e6 if "throttled_usec" in cpu else None,
            pids_peak=_read_int(os.path.join(self.path, "pids.peak")),  # Linux 6.1+
            pids_limit_hits=pids_events.get("max"),
        )

    def kill_all(self) -> None:
        kill_file = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(kill_file):  # Linux 5.14+: the kernel kills, forks included
            write(kill_file, 1)
            return
        # Older kernels: freeze so nothing forks while we go through the list, then kill.
        write(os.path.join(self.path, "cgroup.freeze"), 1)
        try:
            for pid in read(os.path.join(self.path, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            write(os.path.join(self.path, "cgroup.freeze"), 0)


class V2Backend:
    """Sandboxes in ``<mount>/<parent>/<id>``; controllers enabled in the parent's subtree_control."""

    version = "v2"

    def __init__(self, mount: str) -> None:
        self.mount = mount

    def available(self) -> set[str]:
        try:
            return set(read(os.path.join(self.mount, "cgroup.controllers")).split())
        except OSError:
            return set()

    def dirs(self, sandbox_id: str, parent: str) -> dict[str, str]:
        return {"unified": os.path.join(self.mount, parent.strip("/"), sandbox_id)}

    def create(
        self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False
    ) -> tuple[V2Cgroup, list[tuple[str, str]]]:
        parent_dir = os.path.join(self.mount, parent.strip("/"))
        needed = set(ACCOUNTING)
        wanted = _controllers_for(limits)
        needed |= wanted
        self._prepare_parent(parent_dir, needed, wanted)
        group = V2Cgroup(self.dirs(sandbox_id, parent))
        make_dir(group.path)
        try:
            writes = group.apply(limits)
        except BaseException:
            group.remove()
            raise
        return group, writes

    def _prepare_parent(self, parent_dir: str, needed: set[str], required: set[str]) -> None:
        # Every level below the mount hands controllers down through cgroup.subtree_control;
        # the parent holds no process itself (the no-internal-processes rule), so it may.
        up = self.mount
        for level in _ancestors(self.mount, parent_dir):
            try:
                delegated = set(read(os.path.join(up, "cgroup.subtree_control")).split())
            except OSError:
                delegated = set()
            missing = sorted(required - delegated)
            if missing:
                names = " ".join("+" + c for c in missing)
                raise HostSupportError(
                    f"cgroup controller {', '.join(missing)} is not delegated to {level}: "
                    f"enable it with: echo '{names}' > {up}/cgroup.subtree_control"
                )
            make_dir(level)
            enabled = set(read(os.path.join(level, "cgroup.subtree_control")).split())
            todo = sorted((needed & delegated) - enabled)
            if todo:
                write(os.path.join(level, "cgroup.subtree_control"), " ".join("+" + c for c in todo))
            up = level


def _controllers_for(limits: Limits) -> set[str]:
    wanted = set()
    if limits.memory is not None:
        wanted.add("memory")
    if limits.cpus is not None or limits.cpu_weight is not None or limits.time is not None:
        wanted.add("cpu")
    if limits.cpuset is not None:
        wanted.add("cpuset")
    if limits.pids is not None:
        wanted.add("pids")
    if limits.io_weight is not None:
        wanted.add("io")
    return wanted


def _ancestors(mount: str, path: str) -> list[str]:
    rel = os.path.relpath(path, mount).split("/")
    return [os.path.join(mount, *rel[: i + 1]) for i in range(len(rel))]


def _read_int(path: str) -> int | None:
    try:
        return int(read(path))
    except (OSError, ValueError):
        return None


def wait_empty(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "populated 0" in read(os.path.join(path, "cgroup.events")):
            return True
        time.sleep(0.002)
    return False
