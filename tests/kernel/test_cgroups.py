"""Limits and accounting on the real kernel, through whichever backend this host has.

This file also runs in a cgroup v2 guest (scripts/test-v2, called by .ci/run), so both
backends are proven on every CI run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.commands import cli
from support.host import processes_matching

from isolate import HostSupportError, Sandbox, cgroups
from isolate.limits import Limits

BACKEND = cgroups.backend()
pytestmark = pytest.mark.skipif(BACKEND is None, reason="no cgroup hierarchy mounted (isolate doctor)")
VERSION = BACKEND.version if BACKEND is not None else ""
MIB = 1 << 20


def test_backend_is_the_expected_one() -> None:
    # This machine (hybrid: v1 controllers) uses v1; the CI guest (pure v2) must use v2.
    expected = os.environ.get("ISOLATE_EXPECT_CGROUP")
    lay = cgroups.layout()
    assert VERSION == (expected or ("v2" if lay.kind == "v2" else "v1"))


def test_every_run_is_accounted(busybox_root: Path) -> None:
    result = Sandbox(busybox_root).run(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
    assert result.ok and result.cgroup == VERSION
    assert result.memory_peak and result.memory_peak > 100_000
    assert result.cpu_time > 0.01 and result.oom_kills == 0 and result.limits_hit == []


def test_cgroup_namespace_hides_the_host_path(busybox_root: Path) -> None:
    out = Sandbox(busybox_root).run(["cat", "/proc/self/cgroup"], capture=True).stdout or b""
    paths = {line.split(":", 2)[2] for line in out.decode().splitlines()}
    assert paths == {"/"}


def test_memory_hog_is_oom_killed() -> None:
    hog = "x = bytearray(128 << 20)\nprint('survived')"
    result = Sandbox(limits=Limits(memory="32M", memory_swap="32M")).run(["python3", "-c", hog], capture=True)
    assert result.status == "oom-killed" and result.oom_killed and result.signal == 9
    assert result.stdout == b""
    assert 24 * MIB <= (result.memory_peak or 0) <= 33 * MIB
    assert "memory" in result.limits_hit and result.short_status == "OOM"


def test_fork_bomb_stops_at_pids_max(busybox_root: Path, marker: str) -> None:
    bomb = "while :; do sleep 5 & done"
    result = Sandbox(busybox_root, limits=Limits(pids=16, wall_time=2)).run(["sh", "-c", bomb, marker], capture=True)
    assert b"can't fork" in (result.stderr or b"")
    assert (result.pids_limit_hits or 0) > 0 and "pids" in result.limits_hit
    assert processes_matching(marker) == []


def test_cpu_spinner_is_throttled_to_its_quota(busybox_root: Path) -> None:
    limits = Limits(cpus=0.2, wall_time=1.0)
    result = Sandbox(busybox_root, limits=limits).run(["sh", "-c", "while :; do :; done"])
    assert result.status == "timed-out" and "wall-time" in result.limits_hit
    assert 0.1 <= result.cpu_time <= 0.35, result.cpu_time
    assert (result.nr_throttled or 0) > 0 and "cpus" in result.limits_hit


def test_cpu_time_limit(busybox_root: Path) -> None:
    start = time.monotonic()
    result = Sandbox(busybox_root, limits=Limits(time=1.0)).run(["sh", "-c", "while :; do :; done"])
    took = time.monotonic() - start
    assert result.status == "timed-out" and result.limits_hit == ["cpu-time"] and result.short_status == "TO"
    assert 1.0 <= result.cpu_time <= 1.5 and took < 3.0


def test_cpu_time_counts_every_process(busybox_root: Path) -> None:
    # Two spinners in the background: the limit is on the sandbox, not on its first process.
    script = "(while :; do :; done) & (while :; do :; done) & wait"
    result = Sandbox(busybox_root, limits=Limits(time=0.5, wall_time=10)).run(["sh", "-c", script])
    # the kill comes at 0.5 s of cpuacct.usage; the user/system split is tick-based (v1)
    assert result.limits_hit == ["cpu-time"] and result.cpu_time >= 0.45, repr(result)


def test_cpuset_pins(busybox_root: Path) -> None:
    cpu = str(len(os.sched_getaffinity(0)) - 1)
    result = Sandbox(busybox_root, limits=Limits(cpuset=cpu)).run(
        ["grep", "Cpus_allowed_list", "/proc/self/status"], capture=True
    )
    assert (result.stdout or b"").split() == [b"Cpus_allowed_list:", cpu.encode()]


def test_shared_pid_namespace_is_ended_through_the_cgroup(busybox_root: Path, marker: str) -> None:
    Sandbox(busybox_root, share=["pid"]).run(["sh", "-c", f"sleep 100 {marker} & true"], capture=True)
    assert processes_matching(marker) == []


def test_no_cgroup(busybox_root: Path) -> None:
    result = Sandbox(busybox_root, cgroups=False).run(["true"])
    assert result.ok and result.cgroup is None and result.memory_peak is None


def test_cli_limits_json_and_meta(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    proc = cli("run", "--json", "--meta", str(meta), "--memory", "32M", "--memory-swap", "32M", "--",
               "python3", "-c", "bytearray(128 << 20)")  # fmt: skip
    data = json.loads(proc.stdout.decode().splitlines()[-1])
    assert proc.returncode == 137 and data["status"] == "oom-killed" and data["oom_killed"] is True
    lines = dict(line.split(":", 1) for line in meta.read_text().splitlines())
    assert lines["status"] == "OOM" and lines["cg-oom-killed"] == "1" and lines["exitsig"] == "9"
    assert int(lines["cg-mem"]) <= 33 * 1024 and float(lines["time-wall"]) > 0


def test_cli_time_limit_meta(busybox_root: Path, tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    proc = cli("run", "--time", "0.5s", "--meta", str(meta), "--rootfs", str(busybox_root), "--",
               "sh", "-c", "while :; do :; done")  # fmt: skip
    lines = dict(line.split(":", 1) for line in meta.read_text().splitlines())
    assert proc.returncode == 137 and lines["status"] == "TO" and lines["killed"] == "1"
    assert lines["message"] == "Time limit exceeded"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--memory", "64Q"], "isolate: --memory '64Q': unknown size suffix 'Q'; use K, M, G"),
        (["--memory", "-5M"], "isolate: --memory '-5M': must be more than zero"),
        (["--memory", "0"], "isolate: --memory '0': must be more than zero"),
        (["--cpus", "0"], "isolate: --cpus '0': must be more than zero"),
        (["--cpus", "999"], "isolate: --cpus 999: choose from 0.01 to"),
        (["--pids", "-1"], "isolate: --pids '-1': must be more than zero"),
        (["--cpuset", "99"], "isolate: --cpuset 99: CPU 99 is not online"),
        (["--cpuset", "a-b"], "isolate: --cpuset 'a-b': expected CPU numbers"),
        (["--cpu-weight", "20000"], "isolate: --cpu-weight 20000: choose from 1 to 10000"),
        (["--memory-swap", "1G"], "isolate: --memory-swap needs --memory"),
        (["--memory", "1G", "--memory-swap", "512M"], "isolate: --memory-swap must be at least --memory"),
        (["--time", "0"], "isolate: '0': a duration must be a positive number"),
        (["--cgroup-parent", "../escape"], "isolate: --cgroup-parent '../escape': give a relative path"),
        (["--no-cgroup", "--memory", "1G"], "isolate: limits need a cgroup"),
    ],
)
def test_bad_limits_are_one_clear_line(args: list[str], message: str) -> None:
    proc = cli("run", *args, "--", "true")
    assert proc.returncode == 125
    assert proc.stderr.decode().startswith(message), proc.stderr
    assert proc.stderr.count(b"\n") == 1


def test_io_weight(busybox_root: Path) -> None:
    sandbox = Sandbox(busybox_root, limits=Limits(io_weight=50))
    if VERSION == "v1":  # blkio.weight went with the CFQ scheduler (Linux 5.0): refused by name
        with pytest.raises(HostSupportError, match="--io-weight needs blkio.weight"):
            sandbox.run(["true"])
    else:
        assert sandbox.run(["cat", "/sys/fs/cgroup/io.weight"], capture=True).stdout == b"default 50\n"


def test_limits_are_visible_inside_read_only(busybox_root: Path) -> None:
    limits = Limits(memory="48M", pids=20, cpus=0.5)
    if VERSION == "v2":
        files = "/sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"
        expected = [str(48 * MIB), "20", "50000", "100000"]
    else:
        files = "/sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
        files += " /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        expected = [str(48 * MIB), "20", "50000"]
    result = Sandbox(busybox_root, limits=limits).run(
        ["sh", "-c", f"cat {files}; mkdir /sys/fs/cgroup/x"], capture=True
    )
    assert (result.stdout or b"").decode().split() == expected
    assert b"Read-only file system" in (result.stderr or b"")


def test_cgroup_parent_option(busybox_root: Path) -> None:
    lay = cgroups.layout()
    mount = lay.v2_mount if VERSION == "v2" else lay.v1_mounts["memory"]
    out = Sandbox(busybox_root, cgroup_parent=f"{cgroups.DEFAULT_PARENT}/custom", cgroups=True).run(["true"])
    assert out.ok
    custom = os.path.join(mount, cgroups.DEFAULT_PARENT, "custom")
    assert os.listdir(custom) == [] or all(not os.path.isdir(os.path.join(custom, d)) for d in os.listdir(custom))
    for m in {*lay.v1_mounts.values(), lay.v2_mount} - {""}:
        if os.path.isdir(os.path.join(m, cgroups.DEFAULT_PARENT, "custom")):
            os.rmdir(os.path.join(m, cgroups.DEFAULT_PARENT, "custom"))


def test_group_freezes_signals_kills_and_removes() -> None:
    """The operations both front ends use (the supervisor, isolate-oci's pause, kill, delete),
    on a group with three processes that one shell forked."""
    assert BACKEND is not None
    sandbox_id = os.urandom(6).hex()
    # share_pid: v1 joins the freezer hierarchy only when asked (supervisor's share_pid runs).
    group, _ = BACKEND.create(sandbox_id, cgroups.DEFAULT_PARENT, Limits(), share_pid=True)
    read_fd, write_fd = os.pipe()
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"],
        stdout=write_fd,
        preexec_fn=lambda: group.attach(os.getpid()),  # in the group before it forks
    )
    os.close(write_fd)
    try:
        assert os.read(read_fd, 16) == b"ready\n"
        pids = group.procs()
        assert shell.pid in pids and len(pids) == 3
        group.freeze()
        assert group.frozen()
        group.kill_all(signal.SIGTERM)  # kill_all thaws only after SIGKILL: the group stays frozen
        assert group.frozen()
        if BACKEND.version == "v1":
            # v1's freezer holds every signal until the thaw.  v2 lets a fatal one through: the
            # kernel turns a signal whose default action ends the process into a group exit
            # (complete_signal, kernel/signal.c), which the v2 freezer does not stop.
            assert shell.poll() is None
        group.freeze(False)
        assert not group.frozen()
        assert shell.wait(10) == -signal.SIGTERM  # and its two sleeps, signalled too
        deadline = time.monotonic() + 5
        while group.procs() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert group.procs() == [] and not any(os.path.exists(f"/proc/{pid}/exe") for pid in pids)
    finally:
        group.kill_all()
        shell.wait(10)
        os.close(read_fd)
        group.remove()
    assert not any(os.path.exists(d) for d in group.dirs.values())


def test_sigkill_ends_a_frozen_group() -> None:
    """A paused container killed (or a group gc finds frozen): v1 delivers no signal to a
    frozen task until it is thawed, so kill_all thaws after SIGKILL (v2: cgroup.kill)."""
    assert BACKEND is not None
    group, _ = BACKEND.create(os.urandom(6).hex(), cgroups.DEFAULT_PARENT, Limits(), share_pid=True)
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: group.attach(os.getpid()))
    try:
        group.freeze()
        assert group.frozen()
        group.kill_all()
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        group.kill_all()
        proc.wait(10)
        group.remove()


def test_oci_remove_leaves_a_shared_parent_at_once() -> None:
    """isolate-oci removes what it made: the container's leaf, retried while its processes
    leave, and a parent only once the last container below it is gone."""
    from isolate.oci import cgroup as oci_cgroup

    top = f"/{cgroups.DEFAULT_PARENT}/{os.urandom(6).hex()}"
    version, dirs_a = oci_cgroup.resolve(f"{top}/a", "a", False)
    made_a = oci_cgroup.create(version, dirs_a, {})
    _, dirs_b = oci_cgroup.resolve(f"{top}/b", "b", False)
    made_b = oci_cgroup.create(version, dirs_b, {})
    try:
        parents = {os.path.dirname(d) for d in dirs_a.values()}
        assert parents <= set(made_a) and not parents & set(made_b)
        started = time.monotonic()
        oci_cgroup.remove(made_a)  # each parent still holds b: EBUSY, not waited for
        assert time.monotonic() - started < 0.5
        assert all(os.path.isdir(p) for p in parents) and not any(os.path.exists(d) for d in dirs_a.values())
    finally:
        oci_cgroup.remove(made_b)
        oci_cgroup.remove(made_a)
    assert not any(os.path.exists(p) for p in parents)
