"""What every contender and section of one benchmark run shares."""

from __future__ import annotations

import argparse
import os

from benchkit import LAUNCHER
from benchkit.host import cgroup_layout


class Context:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.tmp = tmp
        self.script = LAUNCHER  # what the workers re-execute
        self.rootfs = ""
        self.cgroup_parent = f"isolate-bench-{os.getpid()}"
        self.state_dir = os.path.join(tmp, "state")
        self.cgroups = cgroup_layout()
        self.which: dict[str, str] = {}
        self.isolate_bin = ""
        self.lib_python = ""
