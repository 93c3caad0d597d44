"""Faults on purpose (isolate.faults): each plan step, each host-side phase of a run and each phase
of the monitor fails in turn.  The error is one line that names the step or phase, the exit status
is docker's 125, and nothing is left: no cgroup, mount, process, record, lock or descriptor (the
autouse no_leaks fixture checks the host; each test checks its own state directory)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN
from support.host import sandbox_cgroups, state_entries

from isolate import Sandbox
from isolate.detached.monitor import socket_path
from isolate.faults import POINTS
from isolate.limits import Limits
from isolate.plan.steps import Step

# A run that uses every kind of step the builder makes without a network or an image.
OPTIONS = ["--memory", "32M", "--pids", "16", "--hostname", "faulty", "--read-only", "--workdir", "/data",
           "--user", "1000:1000", "--tmpfs", "/scratch"]  # fmt: skip


def full_sandbox(root: Path, volume: Path, state_dir: Path) -> Sandbox:
    return Sandbox(root, volumes=[f"{volume}:/data"], tmpfs=["/scratch"], read_only=True, hostname="faulty",
                   workdir="/data", user=(1000, 1000), limits=Limits(memory=32 << 20, pids=16),
                   state_dir=str(state_dir))  # fmt: skip


def step_kinds(root: Path, volume: Path, state_dir: Path) -> list[str]:
    plan = full_sandbox(root, volume, state_dir).plan(["true"])
    kinds = list(dict.fromkeys(type(step).__name__ for step in plan.steps))
    assert all(issubclass(type(step), Step) for step in plan.steps)
    return kinds


def isolate(state_dir: Path, fault: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ISOLATE_STATE_DIR": str(state_dir), "ISOLATE_FAULT": fault}
    return subprocess.run([ISOLATE_BIN, *args], env=env, capture_output=True, timeout=60)


def leftovers(state_dir: Path) -> list[str]:
    """What a run left in its own state directory: records, locks, a monitor's socket."""
    deadline = time.monotonic() + 5
    while os.path.exists(socket_path(str(state_dir))) and time.monotonic() < deadline:
        time.sleep(0.05)  # an idle monitor exits within a second, its socket with it
    return sorted(e for e in state_entries(str(state_dir))
                  if "/sandboxes/" in e or "/locks/" in e or e.endswith("monitor.sock"))  # fmt: skip


def one_line_naming(stderr: bytes, *names: str) -> str:
    """The one line of ``stderr``, which names one of ``names`` (sandbox ids aside)."""
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr.decode()}"
    line = re.sub("[0-9a-f]{12}", "ID", lines[0])
    assert any(re.sub("[0-9a-f]{12}", "ID", name) in line for name in names), f"{lines[0]!r} names none of {names}"
    return lines[0]


def test_each_plan_step_failing_is_named_and_leaves_nothing(busybox_root: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    state_dir = tmp_path / "state"
    kinds = step_kinds(busybox_root, volume, state_dir)
    assert {"MakeMountsPrivate", "Mount", "PivotRoot", "JoinCgroup", "SetUser", "NoNewPrivs"} <= set(kinds)
    for kind in kinds:
        plan = full_sandbox(busybox_root, volume, state_dir / kind).plan(["true"])
        first = next(s for s in plan.steps if type(s).__name__ == kind)
        for detached in (False, True):
            args = ["run", *(["-d"] if detached else []), *OPTIONS, "-v", f"{volume}:/data",
                    "--rootfs", str(busybox_root), "--", "sh", "-c", "echo ran > /scratch/x"]  # fmt: skip
            # a monitor keeps the environment it started with: each kind gets its own
            proc = isolate(state_dir / kind, f"step:{kind}", *args)
            assert proc.returncode == 125, (kind, detached, proc.stdout, proc.stderr)
            line = one_line_naming(proc.stderr, first.shell(plan.root), first.what)
            assert "Input/output error" in line, line
            assert not proc.stdout, (kind, proc.stdout)  # the command never ran
            assert leftovers(state_dir / kind) == [], (kind, detached)
            assert sandbox_cgroups() == [], (kind, detached)


def test_each_host_phase_failing_is_named_and_leaves_nothing(busybox_root: Path, tmp_path: Path) -> None:
    names = {
        "cgroup:create": "creating the cgroup",
        "supervisor:spawned": "starting the sandbox",
        "supervisor:finish": "reading the sandbox's accounting",
    }
    assert set(names) == {p for p in POINTS if p.startswith(("cgroup:", "supervisor:"))}
    for point, phrase in names.items():
        for action in ("error", "enospc"):
            proc = isolate(tmp_path / "state", f"{point}={action}", "run", "--memory", "32M", "--rootfs",
                           str(busybox_root), "--", "true")  # fmt: skip
            assert proc.returncode == 125, (point, proc.stderr)
            line = one_line_naming(proc.stderr, phrase)
            assert ("No space left on device" if action == "enospc" else "Input/output error") in line
            assert leftovers(tmp_path / "state") == [], point
            assert sandbox_cgroups() == [], point


@pytest.mark.parametrize("point", ["monitor:spawn", "monitor:plan", "monitor:record"])
def test_each_monitor_phase_failing_at_start_is_named_and_leaves_nothing(point: str, busybox_root: Path,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    # A monitor keeps the environment it started with: each point gets a monitor of its own.
    state_dir = tmp_path / "state"
    proc = isolate(state_dir, point, "run", "-d", "--memory", "32M", "--rootfs", str(busybox_root), "--",
                   "sleep", "30")  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    one_line_naming(proc.stderr, "monitor")
    assert leftovers(state_dir) == []
    assert sandbox_cgroups() == []


def test_a_monitor_failing_to_record_an_exit_records_the_failure(busybox_root: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = isolate(state_dir, "monitor:exited", "run", "-d", "--memory", "32M", "--rootfs", str(busybox_root),
                   "--", "true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sandbox_id = proc.stdout.decode().strip()
    wait = isolate(state_dir, "", "wait", sandbox_id)
    assert wait.returncode == 125
    one_line_naming(wait.stderr, "fault injected at monitor:exited")
    (row,) = json.loads(isolate(state_dir, "", "ps", "-a", "--json").stdout)
    assert row["status"] == "stopped" and row["exit_code"] == 125 and "monitor:exited" in row["error"]
    assert sandbox_cgroups() == []  # the cleanup ran before the failure
    assert isolate(state_dir, "", "rm", sandbox_id).returncode == 0
    assert leftovers(state_dir) == []


def test_every_named_point_is_tested_or_belongs_to_image_import() -> None:
    tested = {"cgroup:create", "supervisor:spawned", "supervisor:finish", "monitor:spawn", "monitor:plan",
              "monitor:record", "monitor:exited"}  # fmt: skip
    assert {p for p in POINTS if not p.startswith("import:")} == tested
