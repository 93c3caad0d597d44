"""A container's cgroup as the engine names it: ``linux.cgroupsPath`` and ``linux.resources``.

The engine chooses where the container's cgroup lives (podman's ``--cgroup-parent``,
containerd's namespace); isolate creates exactly the directories that do not exist yet,
records them, and on delete removes only those (leaf first).  Limits are written straight
into the kernel's files: the OCI fields name the files' values, and a translation through
isolate's ``Limits`` would lose some (a CFS period other than 100 ms, a memory
reservation).  The table below is the whole translation, v1 and v2 side by side.
"""

from __future__ import annotations

import os

from isolate.cgroups import DEFAULT_PARENT, Cgroup, layout, open_cgroup
from isolate.cgroups.base import read, remove_dirs, write
from isolate.errors import ConfigError, HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The v1 hierarchies a container joins (runc joins every mounted one): accounting, limits,
# the freezer for pause, and devices for device rules.
V1_JOIN = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices", "blkio", "hugetlb", "net_cls",
           "net_prio", "perf_event")  # fmt: skip
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


def _v1_mounts() -> dict[str, str]:
    """controller -> mount point, including the ones cgroups.layout does not track."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] == "cgroup":
                for opt in fields[2].split(","):
                    if opt in V1_JOIN:
                        mounts.setdefault(opt, left.split()[4])
    return mounts


def _own_cgroup(hierarchy: str) -> str:
    """This process's cgroup in one hierarchy ("" for v2), from /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if (hierarchy == "" and names == "") or hierarchy in names.split(","):
                return path
    return "/"


def resolve(cgroups_path: str, container_id: str, systemd: bool) -> tuple[str, dict[str, str]]:
    """(version, controller -> directory) of the container's cgroup.

    An absolute path is relative to each hierarchy's root, a relative one to the caller's
    own cgroup (as runc's cgroupfs driver reads it); none gives ``/<DEFAULT_PARENT>/<id>``
    (``/isolate/<id>``), beside the sandboxes' groups.
    """
    if systemd or ":" in cgroups_path:
        raise ConfigError(
            "systemd cgroups are not supported: isolate-oci drives cgroupfs itself; configure the engine's "
            "cgroup manager as cgroupfs (podman --cgroup-manager=cgroupfs, containerd SystemdCgroup = false)"
        )
    path = cgroups_path or f"/{DEFAULT_PARENT}/{container_id}"
    if ".." in path.split("/"):
        raise ConfigError(f"linux.cgroupsPath {cgroups_path!r}: '..' is not allowed")
    lay = layout()
    if lay.v2_mount and {"memory", "pids"} <= lay.v2_controllers:
        base = path if path.startswith("/") else os.path.join(_own_cgroup(""), path)
        return "v2", {"unified": os.path.normpath(lay.v2_mount + "/" + base)}
    mounts = _v1_mounts()
    if not mounts:
        raise HostSupportError("no cgroup hierarchy is mounted; mount cgroup2 at /sys/fs/cgroup")
    dirs = {}
    for name, point in mounts.items():
        base = path if path.startswith("/") else os.path.join(_own_cgroup(name), path)
        dirs[name] = os.path.normpath(point + "/" + base)
    return "v1", dirs


def missing(version: str, dirs: dict[str, str]) -> list[str]:
    """The directories :func:`create` would make now, parents first."""
    out: list[str] = []
    for controller, path in dirs.items():
        out += _missing_levels(_mount_of(version, controller, path), path)
    return out


def _missing_levels(mount: str, path: str) -> list[str]:
    """The directories from below ``mount`` down to ``path`` that do not exist yet, parents first."""
    levels = []
    level = path
    while level != mount and not os.path.isdir(level):
        levels.append(level)
        level = os.path.dirname(level)
    return levels[::-1]


def create(version: str, dirs: dict[str, str], resources: dict[str, Any],
           devices: list[dict[str, Any]] | None = None) -> list[str]:  # fmt: skip
    """Make the directories (returns those made, parents first) and write the limits."""
    made: list[str] = []
    try:
        for controller, path in dirs.items():
            mount = _mount_of(version, controller, path)
            for level in _missing_levels(mount, path):
                try:
                    os.mkdir(level, 0o755)
                except FileExistsError:
                    continue
                made.append(level)
                if version == "v1" and controller == "cpuset":
                    from isolate.cgroups.v1 import inherit_cpuset

                    inherit_cpuset(level)
            if version == "v2":
                _delegate(mount, path)
        apply(version, dirs, resources, devices or [])
        if version == "v2" and resources.get("devices"):
            from isolate.oci.devices_bpf import attach

            attach(dirs["unified"], v2_device_rules(resources, devices or []))
    except BaseException:
        remove(made)
        raise
    return made


def _mount_of(version: str, controller: str, path: str) -> str:
    lay = layout()
    if version == "v2":
        return lay.v2_mount
    for point in set(_v1_mounts().values()):
        if path == point or path.startswith(point + "/"):
            return point
    return "/"


def _delegate(mount: str, path: str) -> None:
    """Enable every available controller down to the container's parent (cgroup v2's rule:
    a child gets only what its parent lists in cgroup.subtree_control)."""
    rel = os.path.relpath(path, mount).split("/")
    up = mount
    for part in rel[:-1]:
        available = set(read(os.path.join(up, "cgroup.controllers")).split()) & set(V2_CONTROLLERS)
        enabled = set(read(os.path.join(up, "cgroup.subtree_control")).split())
        todo = sorted(available - enabled)
        if todo:
            try:
                write(os.path.join(up, "cgroup.subtree_control"), " ".join("+" + c for c in todo))
            except HostSupportError:
                pass  # a level holding processes cannot delegate; its children get what it has
        up = os.path.join(up, part)
    available = set(read(os.path.join(up, "cgroup.controllers")).split()) & set(V2_CONTROLLERS)
    enabled = set(read(os.path.join(up, "cgroup.subtree_control")).split())
    if available - enabled:
        try:
            write(os.path.join(up, "cgroup.subtree_control"), " ".join("+" + c for c in sorted(available - enabled)))
        except HostSupportError:
            pass


# What runc allows after the config's own device rules (libcontainer/specconv AllowedDevices):
# mknod of anything (opening is what matters), the default devices, ptys and /dev/net/tun.
DEFAULT_ALLOWED: list[dict[str, Any]] = [
    {"allow": True, "type": "c", "access": "m"}, {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2), (10, 200))),
]  # fmt: skip


def writes(
    version: str, resources: dict[str, Any], devices: list[dict[str, Any]] | None = None
) -> list[tuple[str, str, str]]:
    """(controller, file, value) for ``linux.resources``, in the order they must be written;
    ``devices`` are the config's ``linux.devices``, allowed in the device cgroup."""
    out: list[tuple[str, str, str]] = []
    mem = resources.get("memory") or {}
    cpu = resources.get("cpu") or {}
    pids = resources.get("pids") or {}
    blkio = resources.get("blockIO") or {}
    v1 = version == "v1"
    if v1:
        if mem.get("limit") is not None:
            out.append(("memory", "memory.limit_in_bytes", str(mem["limit"])))
        if mem.get("swap") is not None:
            out.append(("memory", "memory.memsw.limit_in_bytes", str(mem["swap"])))
        if mem.get("reservation") is not None:
            out.append(("memory", "memory.soft_limit_in_bytes", str(mem["reservation"])))
        if mem.get("kernel") is not None:
            out.append(("memory", "memory.kmem.limit_in_bytes", str(mem["kernel"])))
        if mem.get("kernelTCP") is not None:
            out.append(("memory", "memory.kmem.tcp.limit_in_bytes", str(mem["kernelTCP"])))
        if mem.get("swappiness") is not None:
            out.append(("memory", "memory.swappiness", str(mem["swappiness"])))
        if mem.get("disableOOMKiller"):
            out.append(("memory", "memory.oom_control", "1"))
        if cpu.get("shares"):
            out.append(("cpu", "cpu.shares", str(cpu["shares"])))
        if cpu.get("period"):
            out.append(("cpu", "cpu.cfs_period_us", str(cpu["period"])))
        if cpu.get("quota"):
            out.append(("cpu", "cpu.cfs_quota_us", str(cpu["quota"])))
        if cpu.get("realtimePeriod"):
            out.append(("cpu", "cpu.rt_period_us", str(cpu["realtimePeriod"])))
        if cpu.get("realtimeRuntime"):
            out.append(("cpu", "cpu.rt_runtime_us", str(cpu["realtimeRuntime"])))
        if blkio.get("weight"):
            out.append(("blkio", "blkio.weight", str(blkio["weight"])))
        if blkio.get("leafWeight"):
            out.append(("blkio", "blkio.leaf_weight", str(blkio["leafWeight"])))
        for dev in blkio.get("weightDevice") or []:
            if dev.get("weight"):
                out.append(("blkio", "blkio.weight_device", f"{dev['major']}:{dev['minor']} {dev['weight']}"))
            if dev.get("leafWeight"):
                out.append(("blkio", "blkio.leaf_weight_device", f"{dev['major']}:{dev['minor']} {dev['leafWeight']}"))
        for key, name in (("throttleReadBpsDevice", "read_bps_device"), ("throttleWriteBpsDevice", "write_bps_device"),
                          ("throttleReadIOPSDevice", "read_iops_device"),
                          ("throttleWriteIOPSDevice", "write_iops_device")):  # fmt: skip
            for dev in blkio.get(key) or []:
                out.append(("blkio", f"blkio.throttle.{name}", f"{dev['major']}:{dev['minor']} {dev['rate']}"))
        for page in resources.get("hugepageLimits") or []:
            out.append(("hugetlb", f"hugetlb.{_page_size(page['pageSize'])}.limit_in_bytes", str(page["limit"])))
        net = resources.get("network") or {}
        if net.get("classID") is not None:
            out.append(("net_cls", "net_cls.classid", str(net["classID"])))
        for prio in net.get("priorities") or []:
            out.append(("net_prio", "net_prio.ifpriomap", f"{prio['name']} {prio['priority']}"))
        listed = [
            {"allow": True, "type": d.get("type", "c"), "major": d.get("major"), "minor": d.get("minor")}
            for d in devices or []
        ]
        rules = list(resources.get("devices") or []) + listed + DEFAULT_ALLOWED
        out += [("devices", name, value) for name, value in device_rules(rules)]
    else:
        if mem.get("reservation") is not None:
            out.append(("unified", "memory.low", _max(mem["reservation"])))
        if mem.get("limit") is not None:
            out.append(("unified", "memory.max", _max(mem["limit"])))
        if mem.get("swap") is not None:
            # OCI's swap is memory + swap (v1's memsw); v2 limits swap alone.
            swap = mem["swap"]
            if swap > 0 and mem.get("limit", -1) > 0:
                swap = swap - mem["limit"]
            out.append(("unified", "memory.swap.max", _max(swap)))
        if cpu.get("shares"):
            out.append(("unified", "cpu.weight", str(1 + ((int(cpu["shares"]) - 2) * 9999) // 262142)))
        if cpu.get("quota") or cpu.get("period"):
            quota = cpu.get("quota")
            out.append(("unified", "cpu.max", f"{_max(quota if quota else -1)} {cpu.get('period') or 100000}"))
        if blkio.get("weight"):
            out.append(("unified", "io.weight", f"default {_io_weight(blkio['weight'])}"))
        for dev in blkio.get("weightDevice") or []:
            if dev.get("weight"):
                out.append(("unified", "io.weight", f"{dev['major']}:{dev['minor']} {_io_weight(dev['weight'])}"))
        # v1's four throttle files are one io.max line per device in v2.
        for key, name in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                          ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):  # fmt: skip
            for dev in blkio.get(key) or []:
                out.append(("unified", "io.max", f"{dev['major']}:{dev['minor']} {name}={dev['rate'] or 'max'}"))
        for page in resources.get("hugepageLimits") or []:
            out.append(("unified", f"hugetlb.{_page_size(page['pageSize'])}.max", str(page["limit"])))
        for name, value in (resources.get("unified") or {}).items():
            if "/" in name or name.startswith("."):
                raise ConfigError(f"linux.resources.unified: {name!r} is not a cgroup file name")
            out.append(("unified", name, str(value)))
    if cpu.get("cpus"):
        out.append(("cpuset" if v1 else "unified", "cpuset.cpus", str(cpu["cpus"])))
    if cpu.get("mems"):
        out.append(("cpuset" if v1 else "unified", "cpuset.mems", str(cpu["mems"])))
    if pids.get("limit") is not None:
        limit = int(pids["limit"])
        out.append(("pids" if v1 else "unified", "pids.max", "max" if limit <= 0 else str(limit)))
    return out


def _page_size(size: str) -> str:
    """A hugepage size ("2MB", "1GB") as it goes into a cgroup file name: never a path."""
    if not size.isalnum():
        raise ConfigError(f"linux.resources.hugepageLimits: pageSize {size!r} is not a size like 2MB")
    return size


def _io_weight(weight: Any) -> int:
    """blkio.weight (10..1000) as io.weight (1..10000), the conversion runc and crun use."""
    return 1 + (int(weight) - 10) * 9999 // 990


def _max(value: Any) -> str:
    return "max" if value is None or int(value) < 0 else str(int(value))


def v2_device_rules(resources: dict[str, Any], devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules of the v2 device filter, in v1's order: what v1 allows by default (everything,
    until the config's first deny), the config's rules, its devices, runc's default devices."""
    listed = [{"allow": True, "type": d.get("type", "c"), "major": d.get("major"), "minor": d.get("minor")}
              for d in devices]  # fmt: skip
    return [{"allow": True, "type": "a"}, *(resources.get("devices") or []), *listed, *DEFAULT_ALLOWED]


def device_rules(rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """v1 devices.allow / devices.deny lines for ``linux.resources.devices``, in order."""
    out = []
    for rule in rules:
        kind = rule.get("type") or "a"
        if kind == "u":
            kind = "c"  # unbuffered character device: a character device to the kernel
        if kind not in ("a", "b", "c"):
            continue  # a fifo has no device rule: the devices cgroup knows only a, b and c
        major = "*" if rule.get("major") in (None, -1) else str(rule["major"])
        minor = "*" if rule.get("minor") in (None, -1) else str(rule["minor"])
        access = rule.get("access") or "rwm"
        line = "a" if kind == "a" and major == "*" and minor == "*" and access == "rwm" else \
            f"{kind} {major}:{minor} {access}"  # fmt: skip
        out.append(("devices.allow" if rule.get("allow") else "devices.deny", line))
    return out


def apply(version: str, dirs: dict[str, str], resources: dict[str, Any],
          devices: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    todo = writes(version, resources, devices or [])
    # v1 refuses a memory limit above memsw and memsw below memory: when raising both,
    # memsw must go first (runc does the same dance).
    files = [name for _, name, _ in todo]
    if "memory.limit_in_bytes" in files and "memory.memsw.limit_in_bytes" in files:
        i, j = files.index("memory.limit_in_bytes"), files.index("memory.memsw.limit_in_bytes")
        try:
            current = int(read(os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")))
        except (OSError, ValueError, KeyError):
            current = 0
        wanted = int(todo[i][2])
        if wanted > current or wanted == -1:
            todo[i], todo[j] = todo[j], todo[i]
    for controller, name, value in todo:
        directory = dirs.get(controller)
        if directory is None:
            raise HostSupportError(
                f"linux.resources needs the {controller} cgroup controller, which this host does not mount"
            )
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            if name == "memory.memsw.limit_in_bytes":
                raise HostSupportError("memory.swap: swap accounting is off on this host (boot with swapaccount=1)")
            if name in ("memory.kmem.limit_in_bytes", "memory.kmem.tcp.limit_in_bytes"):
                continue  # gone from newer kernels; runc ignores it too
            raise HostSupportError(f"{path}: no such cgroup file; this kernel does not offer it")
        write(path, value)


def group(version: str, dirs: dict[str, str]) -> Cgroup:
    """The container's group, driven like a sandbox's (cgroups/base.py: freeze, kill, remove)."""
    return open_cgroup(version, dirs)


def remove(made: list[str]) -> list[str]:
    """rmdir what ``create`` made, deepest first; waits briefly for exiting processes.

    A parent shared with another container stays; a leaf whose killed processes have not
    left yet (EBUSY) is retried.  Returns the container's own directories still there, each
    with why: a leaf that would not go, or one whose hierarchy is no longer mounted in this
    mount namespace (its rmdir finds nothing, and the group lives on in the kernel).
    """
    leaves = [path for path in made if not any(other.startswith(path + "/") for other in made)]
    failed = remove_dirs(made, busy=leaves)
    left = [f"{path}: {exc.strerror or exc}" for path, exc in failed if path in leaves]
    mounts = _cgroup_mounts()
    for leaf in leaves:
        if not any(leaf.startswith(point + "/") for point in mounts):
            left.append(f"{leaf}: its cgroup hierarchy is no longer mounted here")
    return left


def _cgroup_mounts() -> set[str]:
    """The mount points of every cgroup and cgroup2 filesystem this process sees."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                points.add(left.split()[4])
    return points


def procs(version: str, dirs: dict[str, str]) -> list[int]:
    try:
        return group(version, dirs).procs()
    except OSError:
        return []


def freeze(version: str, dirs: dict[str, str], frozen: bool) -> None:
    group(version, dirs).freeze(frozen)


def frozen(version: str, dirs: dict[str, str]) -> bool:
    return group(version, dirs).frozen()


def kill_all(version: str, dirs: dict[str, str], sig: int) -> None:
    """Signal every process of the container (``kill --all``); frozen first so none escapes by forking."""
    group(version, dirs).kill_all(sig)
