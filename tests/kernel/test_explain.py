"""--explain prints the plan the runtime executes: compared here with a trace of what it executed."""

from __future__ import annotations

import os
import shlex
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


def inside(host_path: str) -> str:
    """Where the sandbox sees a file of its own cgroup, relative to its /sys/fs/cgroup: its group
    is the root there (plan/mounts.py cgroup_steps), v1's hierarchies by their mount's name."""
    from isolate.cgroups import layout

    for point in layout().v1_options:
        if host_path.startswith(point + "/"):
            return f"./{os.path.basename(point)}/{os.path.basename(host_path)}"
    return f"./{os.path.basename(host_path)}"


@pytest.mark.parametrize("new_parent", [False, True], ids=["parent-made", "first-run-under-a-new-parent"])
def test_explained_cgroup_writes_are_the_files_the_sandbox_has(new_parent: bool, busybox_root: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    # The first run under a parent makes it, after --explain was printed: what is written must
    # not depend on it (on v2, --memory alone writes memory.swap.max wherever swap is accounted).
    parent = "isolate-test-" + os.urandom(4).hex() if new_parent else "isolate"
    read_all = "cd /sys/fs/cgroup && grep -r . . 2>/dev/null; true"
    try:
        explained, traced, proc = explained_and_traced(
            tmp_path, "--cgroup-parent", parent, "--memory", "64M", "--pids", "32", "--cpus", "0.5",
            "--rootfs", str(busybox_root), "--", "sh", "-c", read_all,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert traced == explained
        # the parent's writes (the child's own, echo $$ > cgroup.procs, join the group)
        writes = [shlex.split(line, comments=True)[1::2] for line in explained
                  if line.startswith("echo ") and "$$" not in line]  # fmt: skip
        files = dict(line.split(":", 1) for line in proc.stdout.decode().splitlines() if ":" in line)
        assert len(writes) >= 4  # memory, pids, the cpu quota
        for value, path in writes:
            assert (path, files.get(inside(path))) == (path, value)
    finally:
        if new_parent:
            from isolate.cgroups import layout

            lay = layout()
            for mount in {*lay.v1_mounts.values(), *([lay.v2_mount] if lay.v2_mount else [])}:
                if os.path.isdir(os.path.join(mount, parent)):
                    os.rmdir(os.path.join(mount, parent))


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
