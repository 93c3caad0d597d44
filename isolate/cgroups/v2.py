"""cgroup v2, written directly on the unified hierarchy (Documentation/admin-guide/cgroup-v2.rst)."""

from __future__ import annotations

import os
import time

from isolate.cgroups.base import Backend, Cgroup, CgroupStats, make_dir, read, read_keyed, write
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
            if limits.memory_swap is not None or swap_accounted(self.path):
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

    def can_freeze(self) -> bool:
        return True

    def freeze(self, frozen: bool = True, timeout: float = 5.0) -> None:
        write(os.path.join(self.path, "cgroup.freeze"), 1 if frozen else 0)
        # The write starts it; cgroup.events says when every process has stopped (or resumed).
        want = f"frozen {1 if frozen else 0}"
        events = os.path.join(self.path, "cgroup.events")
        deadline = time.monotonic() + timeout
        while want not in read(events) and time.monotonic() < deadline:
            time.sleep(0.002)

    def frozen(self) -> bool:
        try:
            return read(os.path.join(self.path, "cgroup.freeze")) == "1"
        except OSError:
            return False

    def _kernel_kill(self) -> bool:
        kill_file = os.path.join(self.path, "cgroup.kill")
        if not os.path.exists(kill_file):  # Linux 5.14+: the kernel kills, forks included
            return False
        write(kill_file, 1)
        return True


class V2Backend(Backend):
    """Sandboxes in ``<mount>/<parent>/<id>``; controllers enabled in the parent's subtree_control."""

    version = "v2"

    def __init__(self, mount: str) -> None:
        self.mount = mount

    def available(self) -> set[str]:
        try:
            return set(read(os.path.join(self.mount, "cgroup.controllers")).split())
        except OSError:
            return set()

    def dirs(self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False) -> dict[str, str]:
        # One directory whatever the limits: the controllers are chosen in subtree_control.
        return {"unified": os.path.join(self.mount, parent.strip("/"), sandbox_id)}

    def open(self, dirs: dict[str, str]) -> V2Cgroup:
        return V2Cgroup(dirs)

    def create(
        self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False
    ) -> tuple[V2Cgroup, list[tuple[str, str]]]:
        parent_dir = os.path.join(self.mount, parent.strip("/"))
        needed = set(ACCOUNTING)
        wanted = _controllers_for(limits)
        needed |= wanted
        self._prepare_parent(parent_dir, needed, wanted)
        group = V2Cgroup(self.dirs(sandbox_id, parent, limits))
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


def swap_accounted(group_dir: str) -> bool:
    """Whether the kernel accounts swap per cgroup: then every group below the root that has
    the memory controller has memory.swap.max.

    Asked of a group that exists before this run makes any, not of the sandbox's parent
    alone: the first run after boot makes that parent, and the answer must not change with
    it (--explain, printed before the run, lists the writes the run makes; every run of the
    same options gets the same limits).  The root never has the file (CFTYPE_NOT_ON_ROOT).
    """
    top = ""
    level = os.path.dirname(group_dir)
    while True:  # the parent (if made already) and its ancestors, up to the hierarchy's root
        if os.path.exists(os.path.join(level, "memory.max")):
            return os.path.exists(os.path.join(level, "memory.swap.max"))
        if os.path.exists(os.path.join(level, "cgroup.controllers")):
            top = level
        elif top:
            break
        if level == os.path.dirname(level):
            break
        level = os.path.dirname(level)
    try:  # any other group with the memory controller (systemd's slices, another runtime's)
        with os.scandir(top or "/sys/fs/cgroup") as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(entry.path, "memory.max")):
                    return os.path.exists(os.path.join(entry.path, "memory.swap.max"))
    except OSError:
        pass
    # No group has memory yet (a fresh boot without systemd): since Linux 5.8 a kernel with
    # swap support accounts it unless booted with swapaccount=0.
    try:
        with open("/proc/cmdline") as f:
            switched_off = "swapaccount=0" in f.read().split()
    except OSError:
        switched_off = False
    return os.path.exists("/proc/swaps") and not switched_off


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
