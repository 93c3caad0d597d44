"""Run OCI runtimes under a private containerd (1.6) driven by ``ctr``, offline.

``start(base)`` runs a containerd of its own: its configuration file, content store and snapshots
live below ``base``; its sockets (gRPC, ttrpc, debug), its state (task bundles, with each task's
rootfs mount and the runtime's log.json), the runtime's ``--root`` and ctr's FIFOs live below
``run_dir(base)`` (``/tmp/ictr-HASH``: socket paths must fit in sockaddr_un).  Nothing is pulled:
``build_image`` makes a one-layer OCI archive from a busybox root filesystem and ``import_image``
loads it with ``ctr images import``.

The daemon runs in a private mount namespace (``unshare --mount --propagation private``) that
also gets a private /run: a tmpfs holding bind mounts of every entry of the host's /run, plus
/run/containerd bound to ``run_dir(base)/run-containerd``.  containerd 1.6 puts its shims' sockets
in /run/containerd/s and ctr its FIFOs in /run/containerd/fifo whatever the configuration says, so
without it they would land on the host.  Whatever the daemon and its shims mount (snapshots, each
task's rootfs) disappears with the namespace, even when they are killed.  The daemon is started
through ``setsid --fork``: it is no child of the calling process (the leak check of
tests/conftest.py looks for those) and ``stop`` ends it by its pid.  Every ``ctr`` command runs in
that namespace too (``nsenter --mount``), so its FIFOs are the ones the shims open.

Containers get the cgroup path ``cgroup_parent(base)/ID`` (``ctr run --cgroup``): never the host's
default parents; ``stop`` kills what is left in ``cgroup_parent(base)`` and removes it in every
hierarchy.  The shims outlive the daemon by design (containerd re-attaches to them after a
restart): ``stop`` finds them by their ``-address SOCKET`` argument and kills them by pid.

``runtime(binary)`` gives the ``--runc-binary`` to use: with ``argv_log`` set, a wrapper that
appends one JSON line per invocation to that file (argv, cwd, PATH, the environment's names, the
open descriptors, and for ``create`` the bundle's config.json), keeps the runtime's ``--log`` file
(the shim deletes it with the bundle) as ``runtime_logs/ID.json`` next to the argv log (a hard
link: both in /tmp), then execs the runtime.

Host facts this relies on (Debian 12, containerd 1.6.20, hybrid cgroup v1 layout, no systemd as
PID 1): the runc v2 shim (io.containerd.runc.v2) calls the runtime as ``BINARY --root
RUNC_ROOT/NAMESPACE --log BUNDLE/log.json --log-format json COMMAND ...``; the CRI plugin (it wants
CNI and a sandbox image) and the btrfs, zfs, devmapper and aufs snapshotters are disabled; the
overlayfs snapshotter is used when it loads, else the native one (copies, no overlay mounts).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMESPACE = "isolate-test"
IMAGE_REF = "localhost/isolate-ctr-busybox:latest"
IMAGE_FILE = ("etc/isolate-ctr-image", b"made by tests/containerd_engine.py\n")  # proves the rootfs
IMAGE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

TIMEOUT = 60.0
START_TIMEOUT = 30.0
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2", "unshare", "nsenter", "setsid")

DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",  # needs CNI and a sandbox image; not what these tests drive
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
]

# Runs in the new mount namespace: a private /run (see the module's docstring), then the daemon.
# $1: a directory for the new /run's tmpfs; $2: what /run/containerd shows; $3: the pid file.
PRIVATE_RUN = r"""
set -eu
new=$1 containerd_dir=$2 pid_file=$3
shift 3
mount -t tmpfs -o mode=0755,size=64m isolate-ctr-run "$new"
for entry in /run/* /run/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=${entry#/run/}
    [ "$name" = containerd ] && continue
    if [ -L "$entry" ]; then
        ln -s "$(readlink "$entry")" "$new/$name"
    elif [ -d "$entry" ]; then
        mkdir "$new/$name" && mount --rbind "$entry" "$new/$name"
    else
        : > "$new/$name" && mount --bind "$entry" "$new/$name"
    fi
done
mkdir "$new/containerd"
mount --bind "$containerd_dir" "$new/containerd"
mount --move "$new" /run
printf %s $$ > "$pid_file"
exec "$@"
"""

# The runtime wrapper's body: after its #! line and its WRAPPED, LOG and LOGS (see ``runtime``).
WRAPPER = r"""
import json, os, sys, time
argv = sys.argv[1:]
def value(flags):
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return None
entry = {"time": time.time(), "pid": os.getpid(), "argv": [WRAPPED, *argv], "cwd": os.getcwd(),
         "PATH": os.environ.get("PATH"), "env": sorted(os.environ)}
command = next((a for i, a in enumerate(argv) if not a.startswith("-")
                and not (i and argv[i - 1] in ("--root", "--log", "--log-format", "--criu"))), None)
entry["command"] = command
fds = {}
for fd in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        continue
    if fds[fd].startswith("socket:["):  # a unix socket's path, when it has one
        try:
            with open("/proc/self/net/unix") as f:
                for line in f:
                    fields = line.split()
                    if fields[6] == fds[fd][8:-1]:
                        fds[fd] += " unix " + (fields[7] if len(fields) > 7 else "(unnamed)")
        except (OSError, IndexError):
            pass
entry["fds"] = fds  # what the shim passed: the container's stdio pipes, a console socket...
if command == "create":
    bundle = value(["--bundle", "-b"]) or "."
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            entry["config"] = json.load(f)
    except (OSError, ValueError) as e:
        entry["config_error"] = repr(e)
log_file = value(["--log"])
if log_file:
    try:  # the runtime appends to it (O_APPEND|O_CREAT, like runc): keep a link the shim won't delete
        os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        name = os.path.basename(os.path.dirname(os.path.abspath(log_file))) + ".json"
        if not os.path.exists(os.path.join(LOGS, name)):
            os.link(log_file, os.path.join(LOGS, name))
        entry["log_copy"] = os.path.join(LOGS, name)
    except OSError as e:
        entry["log_copy_error"] = repr(e)
with open(LOG, "a") as f:
    f.write(json.dumps(entry) + "\n")
os.execv(WRAPPED, [WRAPPED, *argv])
"""


class CtrError(subprocess.CalledProcessError):
    """A failed ``ctr`` command, with its output (and the tail of the daemon's log)."""

    def __init__(self, returncode: int, cmd: list[str], output: bytes, stderr: bytes, daemon_log: str = "") -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.daemon_log = daemon_log

    def __str__(self) -> str:
        out = self.output.decode(errors="replace").strip()[-2000:]
        err = self.stderr.decode(errors="replace").strip()[-3000:]
        text = f"{super().__str__()}\nstdout: {out}\nstderr: {err}"
        if self.daemon_log:
            text += f"\ncontainerd's log (tail):\n{self.daemon_log}"
        return text


def require_containerd() -> dict[str, str]:
    """The absolute paths of containerd, ctr, the runc v2 shim and the util-linux tools used."""
    found: dict[str, str] = {}
    for name in BINARIES:
        path = shutil.which(name, path=SBIN_PATH)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed (apt-get install containerd util-linux)")
        found[name] = path
    return found


def _hash(base: Path) -> str:
    return hashlib.sha256(str(Path(base).resolve()).encode()).hexdigest()[:12]


def cgroup_parent(base: Path) -> str:
    """The cgroup parent of this daemon's containers, at the root of each hierarchy."""
    return "/isolate-ctr-" + _hash(base)


def run_dir(base: Path) -> Path:
    """Where the daemon's sockets and run state live (short: sockets' paths must fit sockaddr_un)."""
    return Path("/tmp") / ("ictr-" + _hash(base))


@dataclass
class Containerd:
    """A running private containerd (see ``start``)."""

    base: Path  # configuration, content store, snapshots
    run: Path  # run_dir(base)
    pid: int  # the daemon's
    socket: Path  # its gRPC socket: ctr -a, and the shims' -address
    namespace: str
    snapshotter: str  # "overlayfs" or "native"
    argv_log: Path | None  # where runtime wrappers log their invocations (None: no wrapper)

    @property
    def runtime_root(self) -> Path:
        """``ctr run --runc-root``: the shim passes ``--root runtime_root/NAMESPACE``."""
        return self.run / "runtime-root"

    @property
    def runtime_logs(self) -> Path:
        """Where the wrapper keeps each container's log.json (see ``runtime_logs_dir``)."""
        return runtime_logs_dir(self.argv_log) if self.argv_log else self.run / "runtime-logs"

    @property
    def log(self) -> Path:
        return self.run / "containerd.log"

    def cgroup(self, cid: str) -> str:
        """The cgroup path of container ``cid`` (``ctr run --cgroup``)."""
        return f"{cgroup_parent(self.base)}/{cid}"

    def daemon_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ctr(
        self, *args: str, check: bool = True, timeout: float = TIMEOUT, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``ctr -a SOCKET -n NAMESPACE ARGS`` in the daemon's mount namespace.

        stdin is /dev/null unless ``input`` is given.  Raises CtrError (with ctr's output and the
        tail of the daemon's log) on a non-zero exit when ``check``.
        """
        tools = require_containerd()
        cmd = [
            tools["nsenter"], f"--mount=/proc/{self.pid}/ns/mnt", "--",
            tools["ctr"], "--address", str(self.socket), "--namespace", self.namespace, *args,
        ]  # fmt: skip
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=_env(),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise CtrError(proc.returncode, cmd, proc.stdout, proc.stderr, self.daemon_log())
        return proc

    def runtime(self, binary: str) -> str:
        """The ``--runc-binary`` for the OCI runtime ``binary``: itself, or its logging wrapper."""
        binary = os.path.abspath(binary)
        if self.argv_log is None:
            return binary
        wrapper = self.run / ("runtime-" + hashlib.sha256(binary.encode()).hexdigest()[:8])
        if not wrapper.exists():
            names = (binary, str(self.argv_log), str(self.runtime_logs))
            wrapper.write_text(f"#!{sys.executable} -I\nWRAPPED, LOG, LOGS = {names!r}\n{WRAPPER}")
            wrapper.chmod(0o755)
        return str(wrapper)

    def run_args(
        self, binary: str, cid: str, *command: str, detach: bool = False, options: tuple[str, ...] = ()
    ) -> list[str]:
        """``ctr`` arguments for ``run`` of IMAGE_REF as ``cid`` with the runtime ``binary``.

        ``--rm`` (or ``--detach``), the runtime (``runtime(binary)``) and its root, the cgroup
        path ``cgroup(cid)``, the snapshotter; ``options`` go before the image (``--memory-limit``).
        """
        return [
            "run", "--detach" if detach else "--rm",
            "--runc-binary", self.runtime(binary),
            "--runc-root", str(self.runtime_root),
            "--cgroup", self.cgroup(cid),
            "--snapshotter", self.snapshotter,
            *options, IMAGE_REF, cid, *command,
        ]  # fmt: skip

    def runtime_log(self, cid: str) -> str:
        """What the runtime wrote to the shim's log.json for ``cid`` (kept by the wrapper)."""
        try:
            return (self.runtime_logs / f"{cid}.json").read_text(errors="replace")
        except OSError:
            return ""

    def tasks(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, PAUSED, CREATED...) from ``ctr task ls``."""
        out = self.ctr("task", "ls").stdout.decode()
        found = {}
        for line in out.splitlines()[1:]:  # TASK  PID  STATUS
            fields = line.split()
            if len(fields) >= 3:
                found[fields[0]] = fields[2]
        return found

    def containers(self) -> list[str]:
        return self.ctr("container", "ls", "--quiet").stdout.decode().split()


def runtime_logs_dir(argv_log: Path) -> Path:
    """The directory of the runtime logs kept with ``argv_log``: ``STEM-runtime-logs`` next to it."""
    return Path(argv_log).with_name(Path(argv_log).stem + "-runtime-logs")


def reset_argv_log(argv_log: Path) -> None:
    """Empty ``argv_log`` and remove the runtime logs kept with it: a log of one run."""
    argv_log = Path(argv_log)
    if argv_log.exists():
        argv_log.write_text("")
    shutil.rmtree(runtime_logs_dir(argv_log), ignore_errors=True)


def _env() -> dict[str, str]:
    return {"PATH": SBIN_PATH, "LANG": "C.UTF-8", "HOME": "/root"}


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(base: Path, run: Path, socket: Path) -> Path:
    """containerd's configuration: every path below ``base`` or ``run``."""
    base, run = Path(base).resolve(), Path(run)
    config = base / "config.toml"
    disabled = ", ".join(_toml(p) for p in DISABLED_PLUGINS)
    config.write_text(
        "version = 2\n"
        f"root = {_toml(str(base / 'root'))}\n"
        f"state = {_toml(str(run / 'state'))}\n"
        f"temp = {_toml(str(base / 'tmp'))}\n"
        f"disabled_plugins = [{disabled}]\n"
        "oom_score = 0\n"
        "[grpc]\n"
        f"  address = {_toml(str(socket))}\n"
        "[ttrpc]\n"
        f"  address = {_toml(str(socket) + '.ttrpc')}\n"
        "[debug]\n"
        f"  address = {_toml(str(run / 'debug.sock'))}\n"
        '  level = "debug"\n'
        "[metrics]\n"
        '  address = ""\n'
        "[plugins]\n"
        '  [plugins."io.containerd.internal.v1.opt"]\n'
        f"    path = {_toml(str(base / 'opt'))}\n"
        # tasks-service needs a v1 runtime plugin in 1.6: keep it, with its runc root here
        '  [plugins."io.containerd.runtime.v1.linux"]\n'
        f"    runtime_root = {_toml(str(run / 'runtime-root-v1'))}\n"
        '  [plugins."io.containerd.monitor.v1.cgroups"]\n'
        "    no_prometheus = true\n"
    )
    return config


def _alive(pid: int) -> bool:
    """``pid`` exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(
    base: Path, argv_log: Path | None = None, namespace: str = NAMESPACE, snapshotter: str = "auto"
) -> Containerd:
    """Start a private containerd for ``base`` (a fresh directory) and wait until it answers.

    ``argv_log``: a file for the runtime wrapper's JSON lines (see ``Containerd.runtime``), or
    None for no wrapper.  ``snapshotter``: "overlayfs", "native" or "auto" (overlayfs when its
    plugin loaded).  Raises RuntimeError with the daemon's log if it does not come up.
    """
    tools = require_containerd()
    base = Path(base).resolve()
    run = run_dir(base)
    if run.exists():  # left by a killed run of the same base: nothing of it can be running now
        shutil.rmtree(run)
    for d in (base / "root", base / "tmp", base / "opt"):
        d.mkdir(parents=True, exist_ok=True)
    for d in (run / "state", run / "run-containerd", run / "new-run", run / "runtime-root"):
        d.mkdir(parents=True)
    socket = run / "c.sock"
    config = write_config(base, run, socket)
    if argv_log is not None:
        argv_log = Path(argv_log).resolve()
        argv_log.parent.mkdir(parents=True, exist_ok=True)
    pid_file = run / "containerd.pid"
    cmd = [
        tools["setsid"], "--fork",
        tools["unshare"], "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", PRIVATE_RUN, "sh", str(run / "new-run"), str(run / "run-containerd"), str(pid_file),
        tools["containerd"], "--config", str(config),
    ]  # fmt: skip
    with open(run / "containerd.log", "ab") as log:
        # setsid --fork: its child is orphaned at once (no child of ours), in a session of its own
        env = {**_env(), "TMPDIR": str(base / "tmp")}
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, check=True, timeout=TIMEOUT)
    daemon = Containerd(base, run, 0, socket, namespace, "native", argv_log)
    daemon.runtime_logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if daemon.pid == 0 and pid_file.exists() and pid_file.read_text():
            daemon.pid = int(pid_file.read_text())
        if daemon.pid and socket.exists():
            probe = daemon.ctr("version", check=False)
            if probe.returncode == 0:
                break
        if (daemon.pid and not _alive(daemon.pid)) or time.monotonic() > deadline:
            log_tail = daemon.daemon_log()
            stop(daemon)
            raise RuntimeError(f"containerd did not start (pid {daemon.pid}); its log:\n{log_tail}")
        time.sleep(0.05)
    if snapshotter == "auto":
        plugins = [p.split() for p in daemon.ctr("plugins", "ls").stdout.decode().splitlines()]
        ok = any(p[:2] == ["io.containerd.snapshotter.v1", "overlayfs"] and p[-1] == "ok" for p in plugins)
        snapshotter = "overlayfs" if ok else "native"
    daemon.snapshotter = snapshotter
    return daemon


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def build_image(rootfs: Path, dest: Path, ref: str = IMAGE_REF) -> Path:
    """Write ``dest``: an OCI archive of ``ref``, one uncompressed layer holding ``rootfs`` and IMAGE_FILE.

    The image's config: Env PATH=IMAGE_PATH, Cmd ["sh"].  The index names it with containerd's
    ``io.containerd.image.name`` annotation (``ctr images import`` takes it as is) and the OCI
    ``ref.name`` annotation (its tag).  Owners and times are fixed: the same digests every time.
    """

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(Path(rootfs).iterdir()):
            tar.add(entry, arcname=entry.name, filter=normalize)
        _add(tar, IMAGE_FILE[0], IMAGE_FILE[1])
    layer = layer_buf.getvalue()
    blobs: dict[str, bytes] = {}
    oci = "application/vnd.oci.image."
    machine = os.uname().machine
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        "os": "linux",
        "config": {"Env": [f"PATH={IMAGE_PATH}"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci + "manifest.v1+json",
        "config": {"mediaType": oci + "config.v1+json", **_blob(blobs, json.dumps(config).encode())},
        "layers": [{"mediaType": oci + "layer.v1.tar", **_blob(blobs, layer)}],
    }
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": oci + "manifest.v1+json",
            **_blob(blobs, json.dumps(manifest).encode()),
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":")[-1]},
        }],
    }  # fmt: skip
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps(index).encode())
        for digest, data in sorted(blobs.items()):
            _add(tar, f"blobs/sha256/{digest}", data)
    return dest


def import_image(daemon: Containerd, archive: Path, ref: str = IMAGE_REF) -> str:
    """``ctr images import`` ``archive`` (unpacked for the daemon's snapshotter); returns ``ref``."""
    daemon.ctr("images", "import", "--snapshotter", daemon.snapshotter, str(Path(archive).resolve()))
    names = daemon.ctr("images", "ls", "--quiet").stdout.decode().split()
    if ref not in names:
        raise RuntimeError(f"ctr images import {archive}: {ref} is not among the images {names}")
    return ref


def remove_all(daemon: Containerd) -> list[str]:
    """Kill and delete every task, then delete every container, of the daemon's namespace.

    Returns the ids of the containers that were there (none after a clean test).
    """
    ids = daemon.containers()
    for tid, status in daemon.tasks().items():
        if status != "STOPPED":
            if status == "PAUSED":
                daemon.ctr("task", "resume", tid, check=False)
            daemon.ctr("task", "kill", "--all", "--signal", "SIGKILL", tid, check=False)
            deadline = time.monotonic() + 10
            while daemon.tasks().get(tid, "STOPPED") != "STOPPED" and time.monotonic() < deadline:
                time.sleep(0.05)
        daemon.ctr("task", "delete", "--force", tid, check=False)
    for cid in ids:
        daemon.ctr("container", "delete", cid, check=False)
    return ids


def shims(socket: Path) -> list[int]:
    """Pids of the shims serving the daemon at ``socket`` (their command line: ``-address SOCKET``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a == b"-address" and v == str(socket).encode() for a, v in zip(argv, argv[1:])) and _alive(int(entry)):
            pids.append(int(entry))
    return pids


def _cgroup_mounts() -> list[str]:
    from support.host import cgroup_mounts

    return cgroup_mounts()


def daemon_cgroups(base: Path) -> list[str]:
    """``cgroup_parent(base)`` in each hierarchy where it exists (none once stopped)."""
    parent = cgroup_parent(base)
    return [m + parent for m in _cgroup_mounts() if os.path.isdir(m + parent)]


def cgroup_pids(base: Path) -> set[int]:
    """The processes in ``cgroup_parent(base)`` and below, in any hierarchy."""
    from support.host import pids_in_cgroups

    return pids_in_cgroups(daemon_cgroups(base))


def _thaw(base: Path) -> None:
    """Thaw every frozen cgroup below ``cgroup_parent(base)``: a paused task ignores SIGKILL until then."""
    for top in daemon_cgroups(base):
        for dirpath, _, files in os.walk(top):
            for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                if name in files:
                    try:
                        with open(os.path.join(dirpath, name), "w") as f:
                            f.write(thawed)
                    except OSError:
                        pass


def _remove_cgroups(base: Path) -> None:
    """Kill what is left in ``cgroup_parent(base)`` (our containers), then remove it everywhere."""
    from support.host import remove_cgroup_trees

    remove_cgroup_trees(daemon_cgroups(base), before_each_try=lambda: _thaw(base))


def _kill(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids``, then SIGKILL those alive after ``timeout``; returns those still alive."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    return pids


def stop(daemon: Containerd, remove: bool = True) -> None:
    """Stop the daemon and remove everything it made: tasks, shims, cgroups, mounts, files.

    Deletes what tasks and containers are left, ends the daemon (SIGTERM, then SIGKILL), kills
    the shims still serving its socket, kills what is left in its cgroup parent and removes that
    parent.  The private mount namespace dies with its last process.  With ``remove``, the
    run directory goes too (``base`` is the caller's).  Raises RuntimeError if a shim or the
    daemon outlives all that.
    """
    if daemon.pid and _alive(daemon.pid):
        try:
            remove_all(daemon)
        except (subprocess.SubprocessError, OSError):
            pass  # a daemon that does not answer: killing it and its shims is the rest of the job
        _kill([daemon.pid], 10.0)
    left = _kill(shims(daemon.socket), 2.0)
    _remove_cgroups(daemon.base)
    survivors = left + ([daemon.pid] if daemon.pid and _alive(daemon.pid) else []) + shims(daemon.socket)
    if survivors:
        raise RuntimeError(f"containerd {daemon.pid} or its shims outlived stop: {sorted(set(survivors))}")
    if remove and daemon.run.exists():
        shutil.rmtree(daemon.run)


def read_argv_log(path: Path) -> list[dict[str, Any]]:
    """The runtime wrapper's entries, oldest first."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def format_invocation(entry: dict[str, Any]) -> str:
    """One wrapper entry as a shell command line (without the bundle's config)."""
    return shlex.join(entry["argv"])
