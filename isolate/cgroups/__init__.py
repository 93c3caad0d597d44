"""Which cgroup hierarchy this host has, and the backend that drives it.

Layouts: ``v2`` (one unified hierarchy), ``v1`` (one hierarchy per controller) and
``hybrid`` (v1 controllers plus a cgroup2 mount, usually at /sys/fs/cgroup/unified,
holding few or no controllers; crun refuses it, isolate uses its v1 side).  The v2 backend
is chosen whenever the unified hierarchy offers memory, cpu and pids.
"""

from __future__ import annotations

import os

from isolate.cgroups.base import DEFAULT_PARENT, Backend, Cgroup, CgroupStats

__all__ = ["DEFAULT_PARENT", "Backend", "Cgroup", "CgroupStats", "Layout", "layout", "backend", "open_cgroup"]

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices")


class Layout:
    __slots__ = ("kind", "v2_mount", "v1_mounts", "v2_controllers", "v1_options")

    def __init__(
        self,
        kind: str,
        v2_mount: str,
        v1_mounts: dict[str, str],
        v2_controllers: set[str],
        v1_options: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.v2_mount = v2_mount
        self.v1_mounts = v1_mounts  # controller -> mount point
        self.v2_controllers = v2_controllers
        self.v1_options = v1_options or {}  # mount point -> its controllers, e.g. "cpu,cpuacct"


_layout: Layout | None = None


def layout(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """The cgroup mounts of this mount namespace (cached for the process)."""
    global _layout
    if _layout is not None and mountinfo == "/proc/self/mountinfo":
        return _layout
    v1: dict[str, str] = {}
    v1_options: dict[str, str] = {}
    v2 = ""
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) < 3:
                continue
            point = left.split()[4]
            if fields[0] == "cgroup2" and not v2:
                v2 = point
            elif fields[0] == "cgroup":
                names = [opt for opt in fields[2].split(",") if opt in V1_CONTROLLERS]
                for name in names:
                    v1.setdefault(name, point)
                if names:
                    v1_options.setdefault(point, ",".join(names))
    controllers: set[str] = set()
    if v2:
        try:
            with open(os.path.join(v2, "cgroup.controllers")) as f:
                controllers = set(f.read().split())
        except OSError:
            pass
    kind = "hybrid" if v1 and v2 else "v2" if v2 else "v1" if v1 else "none"
    result = Layout(kind, v2, v1, controllers, v1_options)
    if mountinfo == "/proc/self/mountinfo":
        _layout = result
    return result


def backend(lay: Layout | None = None) -> Backend | None:
    """A V2Backend or V1Backend for this host, or None when no usable hierarchy is mounted."""
    lay = lay or layout()
    if lay.v2_mount and {"memory", "cpu", "pids"} <= lay.v2_controllers:
        from isolate.cgroups.v2 import V2Backend

        return V2Backend(lay.v2_mount)
    if "memory" in lay.v1_mounts:
        from isolate.cgroups.v1 import V1Backend

        return V1Backend(lay.v1_mounts)
    if lay.v2_mount and lay.v2_controllers:
        from isolate.cgroups.v2 import V2Backend

        return V2Backend(lay.v2_mount)
    return None


def open_cgroup(version: str, dirs: dict[str, str]) -> Cgroup:
    """A handle on an existing group (a sandbox's or an OCI container's), by its recorded
    version: reading usage while it runs, freezing, killing, removing."""
    if version == "v2":
        from isolate.cgroups.v2 import V2Cgroup

        return V2Cgroup(dirs)
    from isolate.cgroups.v1 import V1Cgroup

    return V1Cgroup(dirs)
