"""cgroup v1 (legacy), one hierarchy per controller, through cgroupspy's controllers.

Limits and counters go through cgroupspy's typed descriptors (v1_files.py), which a
V1Backend imports as it is made (sandbox runs: while planning).  A group opened on its own
(open_cgroup: isolate-oci's state, kill and delete, isolate gc) freezes, kills and removes
with direct writes and imports cgroupspy only if it sets a limit or reads a counter.
"""

from __future__ import annotations

import os
import time

from isolate.cgroups.base import Backend, Cgroup, CgroupStats, make_dir, read, read_keyed, write
from isolate.errors import HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from isolate.limits import Limits

USER_HZ = os.sysconf("SC_CLK_TCK")  # cpuacct.stat counts in USER_HZ ticks


# The hierarchies v1_files.CLASSES has a controller class for (limits and counters).
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer")
# Always: what every run reports (peak memory and OOM kills, CPU time, pids.max hits).
ACCOUNTING = ("memory", "cpuacct", "pids")


class V1Cgroup(Cgroup):
    version = "v1"

    def __init__(self, dirs: dict[str, str]) -> None:
        super().__init__(dirs)
        self._ctl: dict[str, Any] | None = None

    @property
    def ctl(self) -> dict[str, Any]:
        """controller -> cgroupspy's controller object on this group's directory."""
        if self._ctl is None:
            from isolate.cgroups.v1_files import CLASSES, Node

            # An OCI container's group also has hierarchies cgroupspy has no class for
            # (devices, blkio...): isolate-oci writes those files itself.
            self._ctl = {name: CLASSES[name](Node(path)) for name, path in self.dirs.items() if name in CLASSES}
        return self._ctl

    def _set(self, controller: str, attr: str, value: object, writes: list[tuple[str, str]]) -> None:
        ctl = self.ctl.get(controller)
        if ctl is None:
            raise HostSupportError(f"the {controller} cgroup controller is not mounted; see isolate doctor")
        interface = type(ctl).__dict__[attr]
        path = os.path.join(self.dirs[controller], os.fsdecode(interface.filename))
        try:
            setattr(ctl, attr, value)
        except FileNotFoundError:
            raise HostSupportError(f"{path}: this kernel has no such cgroup file") from None
        except OSError as exc:
            raise HostSupportError(f"cgroup: writing {value!r} to {path} failed: {exc.strerror}") from None
        writes.append((path, str(value)))

    def planned(self, limits: Limits) -> list[tuple[str, str, object]]:
        """(controller, attribute or "file:NAME", value) that ``apply`` sets, in order."""
        todo: list[tuple[str, str, object]] = []
        if limits.memory is not None:
            todo.append(("memory", "limit_in_bytes", limits.memory))
            if limits.memory_swap is not None:
                if "memory" in self.dirs and not os.path.exists(
                    os.path.join(os.path.dirname(self.dirs["memory"]), "memory.memsw.limit_in_bytes")
                ):
                    raise HostSupportError("--memory-swap: swap accounting is off; boot with swapaccount=1")
                todo.append(("memory", "memsw_limit_in_bytes", limits.memory_swap))
        if limits.cpus is not None:
            todo.append(("cpu", "cfs_period_us", 100000))
            todo.append(("cpu", "cfs_quota_us", round(limits.cpus * 100000)))
        if limits.cpu_weight is not None:
            # The conversion runc and crun use between v2's weight and v1's shares.
            todo.append(("cpu", "shares", 2 + (limits.cpu_weight - 1) * 262142 // 9999))
        if limits.cpuset is not None:
            # A v1 cpuset group starts with empty cpus and mems and refuses tasks until both
            # are set; mems comes from the parent.
            try:
                mems = read(os.path.join(os.path.dirname(self.dirs["cpuset"]), "cpuset.mems"))
            except OSError:
                mems = "(the parent's cpuset.mems)"
            todo.append(("cpuset", "file:cpuset.mems", mems))
            todo.append(("cpuset", "file:cpuset.cpus", limits.cpuset))
        if limits.pids is not None:
            todo.append(("pids", "max", limits.pids))
        if limits.io_weight is not None:
            raise HostSupportError(
                "--io-weight needs blkio.weight, which the v1 blkio controller offers only with the "
                "CFQ scheduler (gone since Linux 5.0); use a cgroup v2 host (io.weight)"
            )
        return todo

    def apply(self, limits: Limits) -> list[tuple[str, str]]:
        writes: list[tuple[str, str]] = []
        for controller, attr, value in self.planned(limits):
            if attr.startswith("file:"):
                self._write_raw(controller, attr[5:], str(value), writes)
            else:
                self._set(controller, attr, value, writes)
        return writes

    def describe(self, limits: Limits) -> list[tuple[str, str]]:
        """(path, value) of each write ``apply`` makes (cgroupspy's attribute -> its file)."""
        out = []
        for controller, attr, value in self.planned(limits):
            if attr.startswith("file:"):
                name = attr[5:]
            else:
                name = os.fsdecode(type(self.ctl[controller]).__dict__[attr].filename)
            out.append((os.path.join(self.dirs[controller], name), str(value)))
        return out

    def _write_raw(self, controller: str, name: str, value: str, writes: list[tuple[str, str]]) -> None:
        # CommaDashSetFile would re-format the list; the kernel's own syntax is written as is.
        path = os.path.join(self.dirs[controller], name)
        write(path, value)
        writes.append((path, value))

    def cpu_usage(self) -> float:
        ctl = self.ctl.get("cpuacct")
        return ctl.usage / 1e9 if ctl is not None else 0.0

    def memory_current(self) -> int | None:
        ctl = self.ctl.get("memory")
        return ctl.usage_in_bytes if ctl is not None else None

    def stats(self) -> CgroupStats:
        values: dict[str, float | int | None] = {}
        if (memory := self.ctl.get("memory")) is not None:
            values["memory_peak"] = memory.max_usage_in_bytes
            values["oom_kills"] = read_keyed(os.path.join(self.dirs["memory"], "memory.oom_control")).get("oom_kill")
        if (acct := self.ctl.get("cpuacct")) is not None:
            acct_dir = self.dirs["cpuacct"]
            try:  # nanoseconds (Linux 4.6+); cpuacct.stat counts 10 ms ticks
                values["cpu_user"] = int(read(os.path.join(acct_dir, "cpuacct.usage_user"))) / 1e9
                values["cpu_system"] = int(read(os.path.join(acct_dir, "cpuacct.usage_sys"))) / 1e9
            except OSError:
                ticks = acct.acct_stat
                values["cpu_user"] = ticks.get("user", 0) / USER_HZ
                values["cpu_system"] = ticks.get("system", 0) / USER_HZ
        if (cpu := self.ctl.get("cpu")) is not None:
            stat = cpu.stat
            values["nr_throttled"] = stat.get("nr_throttled")
            values["throttled_time"] = stat.get("throttled_time", 0) / 1e9
        if (pids := self.ctl.get("pids")) is not None:
            values["pids_limit_hits"] = pids.events.get("max")
        return CgroupStats(**values)

    def can_freeze(self) -> bool:
        return "freezer" in self.dirs

    def freeze(self, frozen: bool = True, timeout: float = 5.0) -> None:
        if "freezer" not in self.dirs:
            raise HostSupportError("freezing needs the freezer cgroup controller, which this host does not mount")
        state = os.path.join(self.dirs["freezer"], "freezer.state")
        want = "FROZEN" if frozen else "THAWED"
        write(state, want)
        # FREEZING until every task has stopped; writing FROZEN again retries the tasks that
        # were busy in the kernel the first time (runc does the same).
        deadline = time.monotonic() + timeout
        while read(state) != want and time.monotonic() < deadline:
            if frozen:
                write(state, want)
            time.sleep(0.002)

    def frozen(self) -> bool:
        try:
            return "freezer" in self.dirs and read(os.path.join(self.dirs["freezer"], "freezer.state")) != "THAWED"
        except OSError:
            return False


class V1Backend(Backend):
    """Sandboxes in ``<mount of each controller>/<parent>/<id>``."""

    version = "v1"

    def __init__(self, mounts: dict[str, str]) -> None:
        self.mounts = mounts  # controller -> mount point
        # cgroupspy now, while the run is planned: imported after the clone, as the group is
        # created, it slows the child it runs beside (docs/performance.md).
        import isolate.cgroups.v1_files  # noqa: F401

    def available(self) -> set[str]:
        return {c for c in self.mounts if c in CONTROLLERS or c == "blkio"}

    def controllers(self, limits: Limits, share_pid: bool = False) -> list[str]:
        """The hierarchies a sandbox joins.  Each one is a migration when the child joins,
        and the first after an idle spell waits for an RCU grace period (cgroup_threadgroup_rwsem):
        join only what the run needs."""
        names = list(ACCOUNTING)
        if limits.cpus is not None or limits.cpu_weight is not None:
            names.append("cpu")  # the quota and cpu.stat's throttling counters
        if limits.cpuset is not None:
            names.append("cpuset")
        if share_pid:
            names.append("freezer")  # to end processes outside a pid namespace of our own
        missing = [c for c in names if c not in self.mounts]
        if missing and any(c not in ACCOUNTING for c in missing):
            wanted = ", ".join(c for c in missing if c not in ACCOUNTING)
            raise HostSupportError(f"the {wanted} cgroup controller is not mounted; see isolate doctor")
        return [c for c in names if c in self.mounts]

    def dirs(self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False) -> dict[str, str]:
        return {
            c: os.path.join(self.mounts[c], parent.strip("/"), sandbox_id) for c in self.controllers(limits, share_pid)
        }

    def open(self, dirs: dict[str, str]) -> V1Cgroup:
        return V1Cgroup(dirs)

    def create(
        self, sandbox_id: str, parent: str, limits: Limits, share_pid: bool = False
    ) -> tuple[V1Cgroup, list[tuple[str, str]]]:
        dirs = self.dirs(sandbox_id, parent, limits, share_pid)
        made: list[str] = []
        try:
            for controller, path in dirs.items():
                parent_dir = os.path.dirname(path)
                if not os.path.isdir(parent_dir):
                    os.makedirs(parent_dir, 0o755, exist_ok=True)
                    if controller == "cpuset":
                        inherit_cpuset(parent_dir)
                make_dir(path)
                made.append(path)
            group = V1Cgroup(dirs)
            return group, group.apply(limits)
        except BaseException:
            for path in reversed(made):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            raise


def inherit_cpuset(path: str) -> None:
    """A new v1 cpuset parent starts empty; give it its own parent's CPUs and memory nodes."""
    up = os.path.dirname(path)
    for name in ("cpuset.cpus", "cpuset.mems"):
        write(os.path.join(path, name), read(os.path.join(up, name)))
