"""isolate-oci driven directly, as an engine drives runc: bundles, lifecycle, errors, hooks, console.

Engines' own tests are in test_oci_podman.py and test_oci_containerd.py; these check each
operation's contract on the real kernel, on whichever cgroup version the host has.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.host import reap_children

from isolate.oci.template import default_config
from isolate.plan.security import CAPS

OCI = os.path.join(os.path.dirname(sys.executable), "isolate-oci")


class Runtime:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a created container keeps create's stdout and stderr (as runc's
        # does), so reading pipes to their end would wait for the container.
        import tempfile

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            done = subprocess.run(
                [OCI, "--root", str(self.root), *args], input=input, stdout=out, stderr=err, timeout=timeout
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read().decode(), err.read().decode())

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"isolate-oci {' '.join(args)}: {done.stderr}"
        return done.stdout

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self.ok("state", cid))


@pytest.fixture()
def oci(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path / "state")
    yield runtime
    # Whatever a failed test left: delete every container, which kills and reaps what it can.
    if runtime.root.exists():
        for name in os.listdir(runtime.root):
            if (runtime.root / name / "state.json").exists():
                runtime("delete", "--force", name)
    reap_children()


def make_bundle(path: Path, busybox_root: Path, args: list[str], **changes: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = default_config(args, rootfs=str(busybox_root))
    config["root"]["readonly"] = True  # the shared busybox root must stay as it is
    for key, value in changes.items():
        config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture()
def bundle(tmp_path: Path, busybox_root: Path) -> Any:
    def make(args: list[str], **changes: Any) -> Path:
        return make_bundle(tmp_path / f"bundle-{os.urandom(3).hex()}", busybox_root, args, **changes)

    return make


def wait_stopped(oci: Runtime, cid: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while oci.state(cid)["status"] != "stopped":
        reap_children()
        assert time.monotonic() < deadline, f"{cid} still {oci.state(cid)['status']}"
        time.sleep(0.02)


def test_run_returns_status_and_isolates(oci: Runtime, bundle: Any) -> None:
    b = bundle(["sh", "-c", "echo pid=$$ host=$(hostname); ls /proc | grep -c '^[0-9]'; exit 3"])
    done = oci("run", "--bundle", str(b), "r1")
    assert done.returncode == 3, done.stderr
    lines = done.stdout.split()
    assert lines[0] == "pid=1" and lines[1] == "host=isolate"
    assert int(lines[2]) <= 3  # sh and ls (and grep): nothing of the host
    assert not (oci.root / "r1").exists()


def test_lifecycle_create_start_state_kill_delete(oci: Runtime, bundle: Any, tmp_path: Path) -> None:
    b = bundle(["sleep", "1000"], annotations={"org.example": "yes"})
    pid_file = tmp_path / "pid"
    oci.ok("create", "--bundle", str(b), "--pid-file", str(pid_file), "c1")
    text = pid_file.read_text()
    assert text.isdigit(), f"the pid file must hold the bare pid: {text!r}"
    st = oci.state("c1")
    assert st["status"] == "created" and st["pid"] == int(text) and st["id"] == "c1"
    assert st["bundle"] == str(b) and st["annotations"] == {"org.example": "yes"} and st["ociVersion"]
    with open(f"/proc/{text}/cmdline", "rb") as f:
        assert b"sleep" not in f.read()  # created: the command does not run yet
    again = oci("create", "--bundle", str(b), "c1")
    assert again.returncode == 1 and "container with id exists: c1" in again.stderr  # runc's words
    oci.ok("start", "c1")
    assert oci.state("c1")["status"] == "running"
    assert "cannot start" in oci("start", "c1").stderr
    listed = json.loads(oci.ok("list", "--format", "json"))
    assert [c["id"] for c in listed] == ["c1"]
    assert oci.ok("list", "-q").split() == ["c1"]
    assert "not stopped" in oci("delete", "c1").stderr
    oci.ok("kill", "c1", "9")
    wait_stopped(oci, "c1")
    done = oci("kill", "c1", "KILL")
    assert done.returncode == 1 and "container not running" in done.stderr
    oci.ok("delete", "c1")
    assert oci("state", "c1").returncode == 1
    assert "does not exist" in oci("state", "c1").stderr
    assert oci("delete", "--force", "c1").returncode == 0  # unknown id with --force: no error


def test_kill_by_name_and_sigterm_with_handler(oci: Runtime, bundle: Any) -> None:
    b = bundle(["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"])
    oci.ok("create", "--bundle", str(b), "k1")
    oci.ok("start", "k1")
    time.sleep(0.2)
    oci.ok("kill", "k1", "SIGTERM")
    wait_stopped(oci, "k1")
    oci.ok("delete", "k1")


def test_errors_name_the_problem_for_engines(oci: Runtime, bundle: Any, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    missing = oci("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle(["nosuchcmd"])), "e1")
    assert missing.returncode == 1
    assert "executable file not found" in missing.stderr  # podman maps this to 127
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "not found" in entry["msg"] and entry["time"]
    noexec = oci("create", "--bundle", str(bundle(["/etc/passwd"])), "e2")
    assert noexec.returncode == 1 and "permission denied" in noexec.stderr  # podman: 126
    assert oci("create", "--bundle", str(tmp_path / "nowhere"), "e3").stderr.count("no such file or directory") == 1
    refused = oci("--systemd-cgroup", "create", "--bundle", str(bundle(["true"])), "e4")
    assert refused.returncode == 1 and "cgroupfs" in refused.stderr
    host_wide = {**default_config()["linux"], "sysctl": {"vm.swappiness": "0"}}
    sysctl = oci("create", "--bundle", str(bundle(["true"], linux=host_wide)), "e5")
    assert sysctl.returncode == 1 and "not namespaced" in sysctl.stderr
    process = default_config()["process"]
    everything = {**process, "capabilities": {"bounding": ["CAP_" + c for c in CAPS]}}
    with open("/proc/self/status") as f:
        held = int(next(line for line in f if line.startswith("CapPrm:")).split()[1], 16)
    if held & (1 << len(CAPS)) - 1 != (1 << len(CAPS)) - 1:  # this host withholds some from root
        caps = oci("create", "--bundle", str(bundle(["true"], process=everything)), "e6")
        assert caps.returncode == 1 and "cannot be granted" in caps.stderr
    broken = {**default_config()["linux"], "uidMappings": [{"containerID": 0, "size": 1}], "gidMappings": [{}]}
    broken["namespaces"] = [*broken["namespaces"], {"type": "user"}]
    shape = oci("create", "--bundle", str(bundle(["true"], linux=broken)), "e8")
    assert shape.returncode == 1 and shape.stderr.endswith("config.json: linux.uidMappings[0]: hostID is missing\n")
    if not os.path.exists("/sys/module/apparmor/parameters/enabled"):
        apparmor = oci("create", "--bundle", str(bundle(["true"], process={**process, "apparmorProfile": "x"})), "e7")
        assert apparmor.returncode == 1 and "AppArmor is not enabled" in apparmor.stderr
    assert sorted(os.listdir(oci.root)) == [n for n in sorted(os.listdir(oci.root)) if n == "seccomp"]


def test_exec_detached_and_attached(oci: Runtime, bundle: Any, tmp_path: Path) -> None:
    oci.ok("run", "--detach", "--bundle", str(bundle(["sleep", "1000"])), "x1")
    done = oci("exec", "x1", "sh", "-c", "echo in $(hostname); ps | grep -c sleep; exit 4")
    assert done.returncode == 4 and done.stdout.split()[:2] == ["in", "isolate"], done.stderr
    process = {"args": ["sleep", "1000"], "cwd": "/tmp", "env": ["PATH=/bin"], "user": {"uid": 1000, "gid": 1000}}
    (tmp_path / "process.json").write_text(json.dumps(process))
    pid_file = tmp_path / "exec.pid"
    oci.ok("exec", "--detach", "--process", str(tmp_path / "process.json"), "--pid-file", str(pid_file), "x1")
    pid = int(pid_file.read_text())
    with open(f"/proc/{pid}/status") as f:
        assert "Uid:\t1000\t1000" in f.read()
    assert os.readlink(f"/proc/{pid}/cwd") == "/tmp"
    assert pid in json.loads(oci.ok("ps", "--format", "json", "x1"))
    missing = oci("exec", "x1", "nosuchcmd")
    assert missing.returncode == 1 and "executable file not found" in missing.stderr
    oci.ok("delete", "--force", "x1")
    reap_children()
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]


def test_pause_resume_update_and_limits_inside(oci: Runtime, bundle: Any) -> None:
    linux = default_config()["linux"]
    linux["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 32},
                          "cpu": {"quota": 50000, "period": 100000}}  # fmt: skip
    b = bundle(["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/n; sleep 0.01; done"], linux=linux)
    oci.ok("run", "-d", "--bundle", str(b), "p1")
    from isolate.cgroups import layout

    v2 = layout().kind == "v2"
    files = ["memory.max", "pids.max", "cpu.max"] if v2 else ["memory/memory.limit_in_bytes", "pids/pids.max",
                                                                 "cpu/cpu.cfs_quota_us"]  # fmt: skip
    seen = oci.ok("exec", "p1", "cat", *[f"/sys/fs/cgroup/{f}" for f in files]).split()
    assert seen == (["67108864", "32", "50000", "100000"] if v2 else ["67108864", "32", "50000"])
    oci.ok("pause", "p1")
    assert oci.state("p1")["status"] == "paused"
    pid = oci.state("p1")["pid"]
    root = f"/proc/{pid}/root/dev/shm/n"
    first = open(root).read()
    time.sleep(0.3)
    assert open(root).read() == first, "a paused container went on running"
    oci.ok("resume", "p1")
    assert oci.state("p1")["status"] == "running"
    time.sleep(0.3)
    assert open(root).read() != first
    oci("update", "--resources", "-", "p1", input=json.dumps({"pids": {"limit": 20}}).encode())
    oci.ok("update", "--pids-limit", "20", "p1")
    assert oci.ok("exec", "p1", "cat", "/sys/fs/cgroup/pids.max" if v2 else "/sys/fs/cgroup/pids/pids.max").strip() \
        == "20"  # fmt: skip
    oci.ok("delete", "--force", "p1")


def test_hooks_get_state_and_run_in_order(oci: Runtime, bundle: Any, tmp_path: Path) -> None:
    out = tmp_path / "hooks.log"

    def hook(name: str) -> dict[str, Any]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {name} $(cat) >> {out}"]}

    hooks = {k: [hook(k)] for k in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "echo started > /dev/shm/started"]}]
    b = bundle(["sh", "-c", "cat /dev/shm/started; sleep 1000"], hooks=hooks)
    tmp_root = tmp_path / "w"
    del tmp_root
    oci.ok("create", "--bundle", str(b), "h1")
    oci.ok("start", "h1")
    oci.ok("kill", "h1", "KILL")
    wait_stopped(oci, "h1")
    oci.ok("delete", "h1")
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["prestart", "createRuntime", "createContainer", "poststart",
                                                   "poststop"]  # fmt: skip
    states = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert all(s["id"] == "h1" and s["bundle"] == str(b) for s in states)
    assert states[0]["status"] == "created" and states[0]["pid"] > 0
    assert states[3]["status"] == "running" and states[4]["status"] == "stopped"


def test_failing_hook_fails_create_and_leaves_nothing(oci: Runtime, bundle: Any) -> None:
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 5"], "timeout": 1}]}
    done = oci("create", "--bundle", str(bundle(["true"], hooks=hooks)), "f1")
    assert done.returncode == 1 and "createRuntime hook" in done.stderr and "1 s" in done.stderr
    assert not (oci.root / "f1").exists()


def test_console_socket_gets_a_pty_of_the_container(oci: Runtime, bundle: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    config = default_config(["sh", "-c", "tty; echo size $(stty size)"])
    b = bundle(["true"], process={**config["process"], "terminal": True, "consoleSize": {"height": 30, "width": 90}})
    oci.ok("create", "--bundle", str(b), "--console-socket", path, "t1")
    conn, _ = server.accept()
    name, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    server.close()
    assert name.startswith(b"/dev/pts/") and len(fds) == 1
    master = fds[0]
    oci.ok("start", "t1")
    output = b""
    try:
        while True:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            output += chunk
    except OSError:
        pass  # EIO: the slave side closed
    os.close(master)
    wait_stopped(oci, "t1")
    oci.ok("delete", "t1")
    assert name.decode() in output.decode() and "size 30 90" in output.decode()


def test_join_network_namespace_by_path(oci: Runtime, bundle: Any) -> None:
    oci.ok("run", "-d", "--bundle", str(bundle(["sleep", "1000"])), "n1")
    pid = oci.state("n1")["pid"]
    linux = default_config()["linux"]
    linux["namespaces"] = [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": f"/proc/{pid}/ns/net"}]
    done = oci("run", "--bundle", str(bundle(["readlink", "/proc/self/ns/net"], linux=linux)), "n2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == os.readlink(f"/proc/{pid}/ns/net")
    oci.ok("delete", "--force", "n1")


def test_user_namespace_mappings(oci: Runtime, busybox_root: Path) -> None:
    import shutil
    import tempfile

    # The container's root is host uid 200000: it must be able to reach its root filesystem,
    # which pytest's private (0700) temporary directory would not let it.
    top = tempfile.mkdtemp(prefix="isolate-userns-")
    os.chmod(top, 0o755)
    shutil.copytree(busybox_root, f"{top}/rootfs", symlinks=True)
    linux = default_config()["linux"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    try:
        b = make_bundle(Path(top) / "bundle", Path(top) / "rootfs", ["sh", "-c", "cat /proc/self/uid_map; id -u"],
                        linux=linux)  # fmt: skip
        done = oci("run", "--bundle", str(b), "u1")
    finally:
        shutil.rmtree(top)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "200000", "65536", "0"]


def test_process_settings_applied(oci: Runtime, bundle: Any) -> None:
    config = default_config()
    process = {**config["process"], "args": ["sh", "-c", "id; pwd; ulimit -n; grep CapEff /proc/self/status; "
                                             "cat /proc/sys/kernel/shmmni; echo $FOO; touch /x 2>&1 | grep -c Read"],
               "cwd": "/tmp", "env": ["PATH=/bin", "FOO=bar"],
               "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
               "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
               "capabilities": {k: ["CAP_KILL"] for k in ("bounding", "effective", "permitted", "inheritable",
                                                           "ambient")}}  # fmt: skip
    linux = {**config["linux"], "sysctl": {"kernel.shmmni": "1234"}}
    done = oci("run", "--bundle", str(bundle(["true"], process=process, linux=linux)), "s1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("uid=1000 gid=1000") and "5" in lines[0].split("groups=")[1]
    assert lines[1:3] == ["/tmp", "256"]
    assert lines[3].split()[1] == f"{1 << 5:016x}"  # CAP_KILL is 5
    assert lines[4:7] == ["1234", "bar", "1"]  # read-only root


def test_features_and_version(oci: Runtime) -> None:
    features = json.loads(oci.ok("features"))
    assert features["linux"]["cgroup"]["systemd"] is False and "createRuntime" in features["hooks"]
    assert "spec: 1." in oci.ok("--version")
    done = subprocess.run([OCI, "--version"], env={"PATH": ""}, capture_output=True, text=True)
    assert done.returncode == 0, "engines run the runtime with an empty PATH"


@pytest.mark.parametrize("allowed", [False, True])
def test_device_rules_enforced(oci: Runtime, bundle: Any, allowed: bool) -> None:
    """linux.resources.devices on v1 (devices.allow/deny) and v2 (a BPF device filter).

    /dev/fuse (10:229) is made inside and opened for reading only, which is harmless: the
    cgroup's refusal is EPERM, anything else (ENODEV without the module) means it let it by.
    """
    config = default_config()
    caps = ["CAP_MKNOD", "CAP_KILL"]
    process = {**config["process"], "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
               "args": ["sh", "-c", "mknod /dev/f c 10 229 && (exec 3< /dev/f) 2>&1; echo end"]}  # fmt: skip
    rules = [{"allow": False, "access": "rwm"}]
    if allowed:
        rules.append({"allow": True, "type": "c", "major": 10, "minor": 229, "access": "r"})
    linux = {**config["linux"], "resources": {"devices": rules}}
    done = oci("run", "--bundle", str(bundle(["true"], process=process, linux=linux)), "d1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("end"), done.stdout
    assert ("Operation not permitted" in done.stdout) is not allowed, done.stdout


def test_resources_translate_to_each_cgroup_version() -> None:
    """The exact files and values of linux.resources on v1 and v2 (runc's and crun's conversions)."""
    from isolate.oci.cgroup import writes

    resources = {
        "memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 32 << 20},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 32},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
    }
    v2 = writes("v2", resources)
    assert v2 == [
        ("unified", "memory.low", str(32 << 20)),
        ("unified", "memory.max", str(64 << 20)),
        ("unified", "memory.swap.max", str(32 << 20)),  # OCI's swap is memory + swap
        ("unified", "cpu.weight", "39"),
        ("unified", "cpu.max", "50000 100000"),
        ("unified", "io.weight", "default 4950"),
        ("unified", "io.max", "8:0 rbps=1048576"),
        ("unified", "cpuset.cpus", "0"),
        ("unified", "pids.max", "32"),
    ]
    v1 = [w for w in writes("v1", resources) if w[0] != "devices"]
    assert v1 == [
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(96 << 20)),
        ("memory", "memory.soft_limit_in_bytes", str(32 << 20)),
        ("cpu", "cpu.shares", "1024"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("blkio", "blkio.weight", "500"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("cpuset", "cpuset.cpus", "0"),
        ("pids", "pids.max", "32"),
    ]
    assert writes("v2", {"pids": {"limit": 0}}) == [("unified", "pids.max", "max")]


# The lifecycle of one container, run in a mount namespace of its own whose mounts are all
# shared, as a systemd host's are (this host's are private, which hid the bug) -- made private
# first, so that on a host whose mounts are shared a regression hurts only this namespace.
# A subreaper, so the container's process is reaped here; prints the mounts of that namespace
# gone and added by the end, and each command's exit status and stderr.
SHARED_HOST_LIFECYCLE = r"""
import ctypes, json, os, shutil, subprocess, sys, tempfile, time
oci, root, bundle, cid, rewrite, no_pivot, own_mount = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rshared", "/"], check=True)
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
def mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)
def call(*args):
    with tempfile.TemporaryFile() as err:  # not a pipe: the created container keeps create's
        done = subprocess.run([oci, "--root", root, *args], stdout=subprocess.DEVNULL, stderr=err, timeout=20)
        err.seek(0)
        calls.append([args[0], done.returncode, err.read().decode().strip()])
calls = []
if own_mount:  # the root on a mount of its own: "/" is then not the root's parent, made private
    config = json.load(open(bundle + "/config.json"))
    os.makedirs(bundle + "/mnt")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", bundle + "/mnt"], check=True)
    shutil.copytree(config["root"]["path"], bundle + "/mnt/root", symlinks=True)
    config["root"]["path"] = bundle + "/mnt/root"
    json.dump(config, open(bundle + "/config.json", "w"))
before = mounts()
call("create", "--bundle", bundle, *(["--no-pivot"] if no_pivot else []), cid)
if rewrite:  # runtime-tools' config_updates_without_affect: a config changed after create is not read
    json.dump({"ociVersion": "1.0.0"}, open(bundle + "/config.json", "w"))
call("start", cid)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    state = subprocess.run([oci, "--root", root, "state", cid], capture_output=True, text=True)
    if state.returncode != 0 or json.loads(state.stdout)["status"] == "stopped":
        break
    time.sleep(0.02)
call("delete", "--force", cid)
after = mounts()
while True:
    try:
        if os.waitpid(-1, 0)[0] <= 0:
            break
    except ChildProcessError:
        break
gone, added = list(before), []
for point in after:
    if point in gone:
        gone.remove(point)
    else:
        added.append(point)
print(json.dumps({"gone": gone, "added": added, "calls": calls}))
"""


def container_cgroups(cid: str) -> list[str]:
    """The container's group below isolate's parent, in every hierarchy (v1 and unified)."""
    from support.host import cgroup_mounts

    from isolate.config import DEFAULT_CGROUP_PARENT

    found = [os.path.join(point, DEFAULT_CGROUP_PARENT, cid) for point in cgroup_mounts()]
    return sorted(path for path in found if os.path.isdir(path))


def lifecycle_on_a_shared_host(oci: Runtime, b: Path, cid: str, rewrite: bool = False, no_pivot: bool = False,
                               own_mount: bool = False) -> dict[str, Any]:  # fmt: skip
    """Create, start, wait and delete one container where every mount is shared; returns the
    mounts it unmounted and added and its commands' results, and asserts it left no cgroup."""
    args = json.dumps([OCI, str(oci.root), str(b), cid, rewrite, no_pivot, own_mount])
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SHARED_HOST_LIFECYCLE,
                           args], capture_output=True, text=True, timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    left = container_cgroups(cid)
    if left:
        from support.host import remove_cgroup_trees

        remove_cgroup_trees(left)
    assert not left, f"isolate-oci left its cgroup: {left}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("propagation", ["shared", "rshared", "slave", "private", "unbindable"])
def test_root_propagation_on_a_shared_host_leaves_host_mounts_and_no_cgroup(
    oci: Runtime, bundle: Any, propagation: str
) -> None:
    # runtime-tools' linux_rootfs_propagation.  With "shared", detaching the old root after
    # pivot_root unmounted the host's /sys/fs/cgroup hierarchies, /dev/pts and /dev/shm (the old
    # root's mounts were their peers), so delete found no cgroup to remove: 8 left on this host.
    linux = {**default_config()["linux"], "rootfsPropagation": propagation}
    result = lifecycle_on_a_shared_host(oci, bundle(["true"], linux=linux), "p-" + propagation)
    assert result["added"] == [], f"the container's mounts landed on the host: {result['added']}"
    assert result["gone"] == [], f"the container unmounted the host's mounts: {result['gone']}"
    statuses = [status for _, status, _ in result["calls"]]
    if propagation == "unbindable" and statuses[0] != 0:
        # Nothing below an unbindable "/" can be bound (the cgroup mount's binds here; runc
        # fails on its root's bind): a refused create must leave nothing either.
        assert "Invalid argument" in result["calls"][0][2], result["calls"]
    else:
        assert statuses == [0, 0, 0], result["calls"]


def test_config_update_after_create_on_a_shared_host_leaves_no_cgroup(oci: Runtime, bundle: Any) -> None:
    # runtime-tools' config_updates_without_affect: rootfsPropagation shared, config.json
    # replaced between create and start.
    linux = {**default_config()["linux"], "rootfsPropagation": "shared"}
    result = lifecycle_on_a_shared_host(oci, bundle(["true"], linux=linux), "u1", rewrite=True)
    assert result["added"] == [], f"the container's mounts landed on the host: {result['added']}"
    assert result["gone"] == [], f"the container unmounted the host's mounts: {result['gone']}"
    assert [status for _, status, _ in result["calls"]] == [0, 0, 0], result["calls"]


def test_no_pivot_on_a_shared_host_does_not_cover_its_root(oci: Runtime, bundle: Any) -> None:
    # --no-pivot moves the root over "/": with "/" shared (the root on a mount of its own, so
    # "/" is not the parent made private), the move was copied onto the host's "/".
    linux = {**default_config()["linux"], "rootfsPropagation": "shared"}
    result = lifecycle_on_a_shared_host(oci, bundle(["true"], linux=linux), "np1", no_pivot=True, own_mount=True)
    assert [status for _, status, _ in result["calls"]] == [0, 0, 0], result["calls"]
    assert result["added"] == [], f"the container's mounts landed on the host: {result['added']}"
    assert result["gone"] == [], f"the container unmounted the host's mounts: {result['gone']}"


def test_delete_reports_a_cgroup_it_cannot_reach(oci: Runtime, bundle: Any) -> None:
    # Whatever unmounts a hierarchy, delete must say its cgroup stays rather than exit 0.
    from support.host import cgroup_mounts

    oci.ok("create", "--bundle", str(bundle(["true"])), "d1")
    hidden = next(point for point in sorted(cgroup_mounts()) if os.path.isdir(os.path.join(point, "isolate", "d1")))
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               'umount -l "$1" && exec "$2" --root "$3" delete --force d1', "sh",
                               hidden, OCI, str(oci.root)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 1, done.stderr
        message = done.stderr.strip()
        assert message.startswith("isolate-oci: container d1 deleted, but its cgroup was not removed")
        assert f"{hidden}/isolate/d1: its cgroup hierarchy is no longer mounted here" in message
        assert len(message.splitlines()) == 1
        assert not (oci.root / "d1").exists()
        assert container_cgroups("d1") == [os.path.join(hidden, "isolate", "d1")]
    finally:
        reap_children()
        for path in container_cgroups("d1"):
            os.rmdir(path)
