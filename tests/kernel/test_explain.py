"""--explain prints the plan the runtime executes: compared here with a trace of what it executed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN


def explained_and_traced(tmp_path: Path, *args: str) -> tuple[list[str], list[str], subprocess.CompletedProcess[bytes]]:
    trace = tmp_path / "trace"
    proc = subprocess.run([ISOLATE_BIN, "run", "--explain", *args], capture_output=True, timeout=60,
                          env=dict(os.environ, ISOLATE_TRACE=str(trace)))  # fmt: skip
    text = proc.stderr.decode()
    parent_part, _, child_part = text.partition("# the child (new namespaces), then the command\n")
    parent = [line for line in parent_part.splitlines() if line and not line.startswith("#")]
    child = [line for line in child_part.splitlines() if line][: child_part.count("\n")]
    exec_at = next(i for i, line in enumerate(child) if line.startswith("exec "))
    # The child's first line names the namespaces clone(2) creates and its last the exec: they
    # are the clone and the exec themselves, not steps.
    assert child[0].startswith("unshare ")
    return parent + child[1:exec_at], trace.read_text().splitlines(), proc


@pytest.mark.parametrize("options", [
    ["--memory", "64M", "--pids", "32", "--cpus", "0.5"],
    ["--read-only", "--hostname", "h", "--tmpfs", "/scratch", "--user", "1000:1000", "--workdir", "/srv"],
    ["--init", "--ulimit", "nofile=512", "--mode", "chroot"],
])  # fmt: skip
def test_explain_lists_every_executed_step(options: list[str], busybox_root: Path, tmp_path: Path) -> None:
    explained, traced, proc = explained_and_traced(tmp_path, *options, "--rootfs", str(busybox_root), "--", "true")
    assert proc.returncode == 0, proc.stderr
    assert traced == explained


def test_explain_shows_cgroup_files_with_their_meaning(busybox_root: Path) -> None:
    out = subprocess.run([ISOLATE_BIN, "run", "--dry-run", "--memory", "64M", "--rootfs", str(busybox_root), "--",
                          "true"], capture_output=True, timeout=60).stdout.decode()  # fmt: skip
    writes = [line for line in out.splitlines() if line.startswith("echo 67108864 > /sys/fs/cgroup/")]
    assert len(writes) == 1 and "# --memory (v" in writes[0]
    assert "pivot_root . ." in out and "mount -t overlay" in out and "unshare --pid --fork --mount" in out


def test_dry_run_runs_nothing(busybox_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = subprocess.run([ISOLATE_BIN, "run", "--dry-run", "--volume", f"{tmp_path}:/out", "--rootfs",
                           str(busybox_root), "--", "touch", "/out/ran"], capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and b"exec touch /out/ran" in proc.stdout
    assert not marker.exists()
