"""cgroupspy's typed descriptors of v1 cgroup files, and the two controllers it lacks.

cgroupspy describes each cgroup file as a typed descriptor on a controller class.  It has
no pids or freezer controller, so they are written here the way its own are.  Its Node and
Tree classes are not used: Tree walks every hierarchy eagerly and ``cgroupspy.nodes``
imports logging (13 ms of start-up); a controller only needs a node's ``full_path``.
Imported apart from v1.py: cgroupspy's import pulls in ``collections`` (about 2 ms), which
freezing, killing and removing a group (isolate-oci's state, kill, delete) do not need.
"""

from __future__ import annotations

import os

from cgroupspy.controllers import Controller, CpuAcctController, CpuController, CpuSetController, MemoryController
from cgroupspy.interfaces import BaseFileInterface, DictFile, IntegerFile


class PidsMaxFile(BaseFileInterface):
    """pids.max: a number, or "max" for no limit (read as None, like IntegerFile's -1)."""

    def sanitize_get(self, value: str) -> int | None:
        return None if value == "max" else int(value)

    def sanitize_set(self, value: int | None) -> str:
        return "max" if value is None else str(int(value))


class PidsController(Controller):
    """pids.max, pids.current, pids.events (Documentation/admin-guide/cgroup-v1/pids.rst)."""

    max = PidsMaxFile("pids.max")
    current = IntegerFile("pids.current", readonly=True)
    events = DictFile("pids.events", readonly=True)


class FreezerController(Controller):
    """freezer.state: THAWED, FREEZING or FROZEN (cgroup-v1/freezer-subsystem.rst)."""

    state = BaseFileInterface("freezer.state")


# controller -> its class (v1.CONTROLLERS lists the same names, without importing cgroupspy).
CLASSES: dict[str, type] = {
    "memory": MemoryController,
    "cpu": CpuController,
    "cpuacct": CpuAcctController,
    "cpuset": CpuSetController,
    "pids": PidsController,
    "freezer": FreezerController,
}


class Node:
    """What a cgroupspy controller needs of a node: the absolute path of the group, as bytes."""

    __slots__ = ("full_path",)

    def __init__(self, path: str) -> None:
        self.full_path = os.fsencode(path)
