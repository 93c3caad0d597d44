"""isolate-oci as containerd's runtime: ``ctr run --runc-binary isolate-oci`` and the task commands.

A private containerd (tests/containerd_engine.py) runs for the module; every container runs from
a busybox image imported from an archive (no registry) with the runc v2 shim calling the runtime
under test.  ISOLATE_TEST_OCI_RUNTIME names another runtime (``/usr/sbin/runc``, to check the tests
themselves); ISOLATE_TEST_OCI_ARGV_LOG a file for the log of the runtime's invocations (by default
it stays in the module's temporary directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import require
from support.containerd_engine import (
    IMAGE_FILE,
    TIMEOUT,
    Containerd,
    build_image,
    daemon_cgroups,
    format_invocation,
    import_image,
    read_argv_log,
    remove_all,
    reset_argv_log,
    shims,
    start,
    stop,
)

ISOLATE_OCI = os.environ.get("ISOLATE_TEST_OCI_RUNTIME") or os.path.join(os.path.dirname(sys.executable), "isolate-oci")
ARGV_LOG = os.environ.get("ISOLATE_TEST_OCI_ARGV_LOG")
CGROUP_MOUNT = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev"  # not in ctr's spec
MEMORY_LIMIT = 48 * 1024 * 1024
HOST_PATHS = ("/run/containerd", "/var/lib/containerd", "/run/runc", "/run/isolate-oci")  # engines' defaults


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, busybox_root: Path) -> Iterator[Containerd]:
    """A private containerd holding the busybox image (started before, stopped after the module)."""
    require("containerd")
    require("ctr")
    host_state = [os.path.exists(p) for p in HOST_PATHS]
    base = tmp_path_factory.mktemp("containerd")
    argv_log = Path(ARGV_LOG) if ARGV_LOG else base / "runtime-argv.log"
    reset_argv_log(argv_log)  # one run's invocations
    started = start(base, argv_log=argv_log)
    try:
        import_image(started, build_image(busybox_root, base / "image.tar"))
        yield started
    finally:
        stop(started)
        assert daemon_cgroups(base) == [] and shims(started.socket) == []
        assert [os.path.exists(p) for p in HOST_PATHS] == host_state, "containerd wrote to the host's defaults"


def leaf_cgroups(d: Containerd) -> list[str]:
    return sorted(os.path.join(top, c) for top in daemon_cgroups(d.base) for c in os.listdir(top)
                  if os.path.isdir(os.path.join(top, c)))  # fmt: skip


@pytest.fixture()
def ctrd(daemon: Containerd) -> Iterator[Containerd]:
    """The module's containerd; after the test, no container, task, shim or container cgroup is left."""
    yield daemon
    left = daemon.containers()
    if left:
        remove_all(daemon)  # for the next tests
    assert left == [], f"containers left behind: {left}"
    deadline = time.monotonic() + 10  # shims and cgroups go after the delete returned
    while (shims(daemon.socket) or leaf_cgroups(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shims(daemon.socket) == [], "a shim outlived its task"
    assert leaf_cgroups(daemon) == [], "a container's cgroup outlived it"


def new_id(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


def explain(d: Containerd, cid: str) -> str:
    """What to show when a ctr command about ``cid`` failed: the runtime's log and invocations."""
    calls = [format_invocation(e) for e in read_argv_log(d.argv_log) if cid in e["argv"]] if d.argv_log else []
    return "\nruntime invocations:\n" + "\n".join(calls) + "\nruntime log.json:\n" + d.runtime_log(cid)


def ctr_out(d: Containerd, cid: str, *args: str, code: int = 0) -> str:
    """``ctr ARGS`` about ``cid``: its stdout, after checking its exit status is ``code``."""
    try:
        proc = d.ctr(*args, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ctr {' '.join(args)}: no answer in {TIMEOUT} s{explain(d, cid)}")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, f"ctr {' '.join(args)}: exit {proc.returncode}\n{err}{explain(d, cid)}"
    return proc.stdout.decode(errors="replace")


def wait_status(d: Containerd, cid: str, status: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while d.tasks().get(cid) != status:
        assert time.monotonic() < deadline, f"task {cid}: {d.tasks().get(cid)}, not {status}{explain(d, cid)}"
        time.sleep(0.05)


def finish(d: Containerd, cid: str) -> None:
    """Kill a detached task, delete it and its container."""
    ctr_out(d, cid, "task", "kill", "--signal", "SIGKILL", cid)
    wait_status(d, cid, "STOPPED")
    ctr_out(d, cid, "task", "delete", cid)
    ctr_out(d, cid, "container", "rm", cid)


def test_run_rm_prints_and_passes_the_exit_status(ctrd: Containerd) -> None:
    cid = new_id("exit")
    out = ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "sh", "-c", "echo hello; exit 3"), code=3)
    assert out == "hello\n"  # ctr run exits with the task's status
    assert cid not in ctrd.containers()  # --rm
    cid = new_id("true")
    assert ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "true")) == ""


def test_run_is_isolated(ctrd: Containerd) -> None:
    cid = new_id("iso")
    script = (
        "for ns in pid mnt uts ipc net; do echo ns $ns $(readlink /proc/self/ns/$ns); done; "
        "echo init $(tr '\\0' ' ' < /proc/1/cmdline); "
        "for p in /proc/[0-9]*; do echo pid ${p#/proc/}; done; "
        f"echo image $(cat /{IMAGE_FILE[0]}); "
        "test -e /etc/debian_version && echo host-etc; "
        "echo links $(ls /sys/class/net); "
        "echo id $(id -u); "
        "for f in /proc/$$/fd/*; do echo fd ${f##*/} $(readlink $f); done; "
        "while read -r key value; do echo status $key $value; done < /proc/self/status; "
        "while read -r _ _ _ _ point _; do echo mount $point; done < /proc/self/mountinfo"
    )
    out = ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "sh", "-c", script))
    seen: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        seen.setdefault(key, []).append(value)
    for entry in seen["ns"]:  # a namespace of its own of each kind, not the host's
        kind, link = entry.split(" ", 1)
        assert link != os.readlink(f"/proc/self/ns/{kind}"), f"{kind}: the host's namespace"
    assert seen["init"] == [f"sh -c {script}"]  # the container's command is its PID 1
    assert "1" in seen["pid"] and len(seen["pid"]) <= 3, seen["pid"]
    assert seen["image"] == [IMAGE_FILE[1].decode().strip()] and "host-etc" not in seen  # the image's root
    assert seen["links"] == ["lo"] and seen["id"] == ["0"]
    # no descriptor of the shim's (its socket is the runtime's fd 3 at create) reaches the container
    assert not [fd for fd in seen["fd"] if "socket:" in fd], seen["fd"]
    # ctr's default spec: a reduced capability set, no_new_privs
    status = dict(v.split(" ", 1) for v in seen["status"] if " " in v)
    with open("/proc/self/status") as f:
        host_bounding = next(line.split()[1] for line in f if line.startswith("CapBnd:"))
    assert int(status["CapBnd:"], 16) < int(host_bounding, 16) and status["NoNewPrivs:"] == "1", status
    points = seen["mount"]
    assert "/" in points and "/proc" in points and "/dev" in points
    standard = ("/proc", "/dev", "/sys", "/run")  # ctr's default spec
    assert all(p == "/" or p.split("/")[1] in [s[1:] for s in standard] for p in points), points
    assert not any(p.startswith(str(ctrd.run)) or p.startswith(str(ctrd.base)) for p in points)


def test_detached_task_exec_kill_delete(ctrd: Containerd) -> None:
    cid = new_id("det")
    assert ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "sleep", "1000", detach=True)) == ""
    assert ctrd.tasks().get(cid) == "RUNNING", explain(ctrd, cid)
    pid = int(ctr_out(ctrd, cid, "task", "ls").split(cid, 1)[1].split()[0])
    # the task runs in the cgroup ctr asked for (below the daemon's parent), in every hierarchy
    for top in daemon_cgroups(ctrd.base):
        with open(os.path.join(top, cid, "cgroup.procs")) as f:
            assert str(pid) in f.read().split(), top
    out = ctr_out(ctrd, cid, "task", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo in; exit 4", code=4)
    assert out == "in\n"
    # an exec joins the task's namespaces: the task's init is its PID 1
    out = ctr_out(ctrd, cid, "task", "exec", "--exec-id", "e2", cid, "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline")
    assert out == "sleep 1000 "
    assert str(pid) in ctr_out(ctrd, cid, "task", "ps", cid).split()
    ctr_out(ctrd, cid, "task", "kill", "--signal", "SIGKILL", cid)
    wait_status(ctrd, cid, "STOPPED")
    deleted = ctrd.ctr("task", "delete", cid, check=False)
    assert deleted.returncode == 0, deleted.stderr.decode() + explain(ctrd, cid)
    # the shim reaped the task's init itself: ctr warns with its status, 128 + SIGKILL
    assert b"exit code 137" in deleted.stderr, deleted.stderr
    assert cid not in ctrd.tasks() and cid in ctrd.containers()
    ctr_out(ctrd, cid, "container", "rm", cid)
    assert cid not in ctrd.containers()


def test_pause_and_resume(ctrd: Containerd) -> None:
    cid = new_id("pause")
    ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "sleep", "1000", detach=True))
    freezer = f"/sys/fs/cgroup/freezer{ctrd.cgroup(cid)}/freezer.state"
    ctr_out(ctrd, cid, "task", "pause", cid)
    assert ctrd.tasks().get(cid) == "PAUSED"
    with open(freezer) as f:
        assert f.read().strip() == "FROZEN"
    ctr_out(ctrd, cid, "task", "resume", cid)
    assert ctrd.tasks().get(cid) == "RUNNING"
    with open(freezer) as f:
        assert f.read().strip() == "THAWED"
    assert ctr_out(ctrd, cid, "task", "exec", "--exec-id", "e1", cid, "echo", "awake") == "awake\n"
    finish(ctrd, cid)


def test_memory_limit_is_visible_inside(ctrd: Containerd) -> None:
    cid = new_id("mem")
    options = ("--memory-limit", str(MEMORY_LIMIT), "--mount", CGROUP_MOUNT)
    ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "sleep", "1000", detach=True, options=options))
    with open(f"/sys/fs/cgroup/memory{ctrd.cgroup(cid)}/memory.limit_in_bytes") as f:
        assert int(f.read()) == MEMORY_LIMIT
    cmd = ("cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(ctr_out(ctrd, cid, "task", "exec", "--exec-id", "e1", cid, *cmd)) == MEMORY_LIMIT
    finish(ctrd, cid)
    cid = new_id("mem-rm")  # and with ctr run --rm: the command itself reads it
    assert int(ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, *cmd, options=options))) == MEMORY_LIMIT


def test_runtime_calls_stay_in_the_daemons_directories(ctrd: Containerd) -> None:
    """The shim gave the runtime a --root, --log and bundle below the daemon's run directory."""
    assert ctrd.argv_log is not None
    cid = new_id("argv")
    ctr_out(ctrd, cid, *ctrd.run_args(ISOLATE_OCI, cid, "true"))
    calls = [e for e in read_argv_log(ctrd.argv_log) if cid in e["argv"]]
    commands = [e["command"] for e in calls]
    assert commands[:2] == ["create", "start"] and "delete" in commands, commands
    for entry in calls:
        argv = entry["argv"]
        assert argv[0] == os.path.abspath(ISOLATE_OCI)
        root = argv[argv.index("--root") + 1]
        assert root == str(ctrd.runtime_root / ctrd.namespace), root
        assert argv[argv.index("--log") + 1].startswith(str(ctrd.run) + "/"), argv
        assert argv[argv.index("--log-format") + 1] == "json"
    create = calls[0]["argv"]
    bundle = create[create.index("--bundle") + 1]
    assert bundle.startswith(str(ctrd.run / "state") + "/") and create[-1] == cid
    assert create[create.index("--pid-file") + 1] == bundle + "/init.pid"
    config = calls[0]["config"]
    assert config["linux"]["cgroupsPath"] == ctrd.cgroup(cid) and config["process"]["args"] == ["true"]
