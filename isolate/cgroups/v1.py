"""cgroup v1 (legacy), one hierarchy per controller, through cgroupspy's controllers.

cgroupspy describes each cgroup file as a typed descriptor on a controller class.  It has
no pids or freezer controller, so they are written here the way its own are.  Its Node and
Tree classes are not used: Tree walks every hierarchy eagerly and ``cgroupspy.nodes``
imports logging (13 ms of start-up); a controller only needs a node's ``full_path``.
"""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum (3 ms of every CLI start)
import os
import time

from cgroupspy.controllers import Controller, CpuAcctController, CpuController, CpuSetController, MemoryController
from cgroupspy.interfaces import BaseFileInterface, DictFile, IntegerFile

from isolate.cgroups.base import Cgroup, CgroupStats, make_dir, read, write
from isolate.errors import HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.limits import Limits

USER_HZ = os.sysconf("SC_CLK_TCK")  # cpuacct.stat counts in USER_HZ ticks


class PidsMaxFile(BaseFileInterface):  # type: ignore[misc]
    """pids.max: a number, or "max" for no limit (read as None, like IntegerFile's -1)."""

    def sanitize_get(self, value: str) -> int | None:
        return None if value == "max" else int(value)

    def sanitize_set(self, value: int | None) -> str:
        return "max" if value is None else str(int(value))


class PidsController(Controller):  # type: ignore[misc]
    """pids.max, pids.current, pids.events (Documentation/admin-guide/cgroup-v1/pids.rst)."""

    max = PidsMaxFile("pids.max")
    current = IntegerFile("pids.current", readonly=True)
    events = DictFile("pids.events", readonly=True)


class FreezerController(Controller):  # type: ignore[misc]
    """freezer.state: THAWED, FREEZING or FROZEN (cgroup-v1/freezer-subsystem.rst)."""

    state = BaseFileInterface("freezer.state")


CONTROLLERS: dict[str, type] = {
    "memory": MemoryController,
    "cpu": CpuController,
    "cpuacct": CpuAcctController,
    "cpuset": CpuSetController,
    "pids": PidsController,
    "freezer": FreezerController,
}
# Always: what every run reports (peak memory and OOM kills, CPU time, pids.max hits).
ACCOUNTING = ("memory", "cpuacct", "pids")


class _Node:
    """What a cgroupspy controller needs of a node: the absolute path of the group, as bytes."""

    __slots__ = ("full_path",)

    def __init__(self, path: str) -> None:
        self.full_path = os.fsencode(path)


class V1Cgroup(Cgroup):
    version = "v1"

    def __init__(self, dirs: dict[str, str]) -> None:
        super().__init__(dirs)
        self.ctl = {name: CONTROLLERS[name](_Node(path)) for name, path in dirs.items()}

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
            values["oom_kills"] = _keyed(os.path.join(self.dirs["memory"], "memory.oom_control")).get("oom_kill")
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

    def kill_all(self) -> None:
        # Freeze first, so nothing forks between reading the list and the kills (v1 has no
        # cgroup.kill); then thaw, so the SIGKILLs are delivered.
        freezer = self.ctl.get("freezer")
        procs_dir = self.dirs.get("pids") or self.dirs.get("memory") or next(iter(self.dirs.values()))
        if freezer is not None:
            freezer.state = "FROZEN"
            deadline = time.monotonic() + 1.0
            while freezer.state.strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.001)
        try:
            for pid in read(os.path.join(procs_dir, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            if freezer is not None:
                freezer.state = "THAWED"


class V1Backend:
    """Sandboxes in ``<mount of each controller>/<parent>/<id>``."""

    version = "v1"

    def __init__(self, mounts: dict[str, str]) -> None:
        self.mounts = mounts  # controller -> mount point

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
                        _inherit_cpuset(parent_dir)
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


def _inherit_cpuset(path: str) -> None:
    """A new v1 cpuset parent starts empty; give it its own parent's CPUs and memory nodes."""
    up = os.path.dirname(path)
    for name in ("cpuset.cpus", "cpuset.mems"):
        write(os.path.join(path, name), read(os.path.join(up, name)))


def _keyed(path: str) -> dict[str, int]:
    from isolate.cgroups.base import read_keyed

    return read_keyed(path)
