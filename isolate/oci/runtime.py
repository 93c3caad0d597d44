"""The OCI runtime operations (runtime-spec's "Operations", runc's commands) over isolate's code.

A container's state lives in ``<root>/<id>/``: ``state.json`` (what ``state`` prints plus
what later commands need) and ``exec.fifo`` while the container is created but not started.
``create`` clones the container's first process straight into its namespaces; that
process builds the root, reports "created" and blocks opening the fifo; ``create`` exits,
so the process is reparented to the engine's subreaper (conmon, the containerd shim), which
reaps it as runc's would be.  ``start`` opens the fifo, and the process execs the command.
"""

from __future__ import annotations

import _signal as signal
import json
import os
import time

from isolate import _libc
from isolate import _state as state
from isolate.errors import ConfigError, IsolateError
from isolate.oci import bundle as B
from isolate.oci import cgroup as C
from isolate.oci import hooks as H
from isolate.oci.warnings import warn
from isolate.process import child

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.1.0"
DEFAULT_ROOT = "/run/isolate-oci"


class NotFound(IsolateError):
    exit_code = 1


class Runtime:
    def __init__(self, root: str = DEFAULT_ROOT, systemd_cgroup: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.systemd_cgroup = systemd_cgroup

    # ---- records -------------------------------------------------------------------------
    def _dir(self, cid: str) -> str:
        if not cid or "/" in cid or cid in (".", "..") or "\0" in cid:
            raise ConfigError(f"invalid container id {cid!r}: use letters, digits, '-', '_' and '.'")
        return os.path.join(self.root, cid)

    def load(self, cid: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self._dir(cid), "state.json")) as f:
                record: dict[str, Any] = json.load(f)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound(f"container {cid} does not exist") from None
        return record

    def _save(self, record: dict[str, Any]) -> None:
        path = os.path.join(self._dir(record["id"]), "state.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, path)

    def status(self, record: dict[str, Any]) -> str:
        pid = int(record.get("pid") or 0)
        if not pid or not state.is_alive({"pid": pid, "pid_start": record.get("pid_start")}):
            return "stopped"
        if os.path.exists(os.path.join(self._dir(record["id"]), "exec.fifo")):
            return "created"
        if record.get("cgroup_version") and C.frozen(record["cgroup_version"], record["cgroup_dirs"]):
            return "paused"
        return "running"

    def state_json(self, record: dict[str, Any], status: str | None = None) -> dict[str, Any]:
        status = status or self.status(record)
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": record["id"],
            "pid": int(record["pid"]) if status != "stopped" else 0,
            "status": status,
            "bundle": record["bundle"],
            "rootfs": record["rootfs"],
            "created": record["created"],
            "owner": "",
        }
        if record.get("annotations"):
            out["annotations"] = record["annotations"]
        return out

    def records(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            try:
                out.append(self.load(name))
            except NotFound:
                continue
        return out

    # ---- create ----------------------------------------------------------------------------
    def create(self, cid: str, bundle: str, pid_file: str | None = None, console_socket: str | None = None,
               no_pivot: bool = False, preserve_fds: int = 0, detach_stdio: bool = False) -> int:  # fmt: skip
        """Build the container and leave its process waiting for ``start``; returns its pid."""
        if os.geteuid() != 0:
            from isolate.errors import NotRootError

            raise NotRootError("isolate-oci must run as root (rootless containers are not supported yet)")
        bundle = os.path.abspath(bundle)
        config = B.load(bundle)
        rootfs = B.rootfs_path(bundle, config)
        directory = self._dir(cid)
        os.makedirs(self.root, 0o711, exist_ok=True)
        try:
            os.mkdir(directory, 0o711)
        except FileExistsError:
            raise ConfigError(f"container with id exists: {cid}") from None
        made_cgroups: list[str] = []
        fds: list[int] = []
        try:
            linux = config.get("linux") or {}
            version: str | None = None
            dirs: dict[str, str] = {}
            version, dirs = C.resolve(linux.get("cgroupsPath") or "", cid, self.systemd_cgroup)
            record: dict[str, Any] = {
                "id": cid, "pid": 0, "bundle": bundle, "rootfs": rootfs,
                "created": _rfc3339(time.time()), "annotations": config.get("annotations") or {},
                "cgroup_version": version, "cgroup_dirs": dirs, "cgroups_made": C.missing(version, dirs),
                "hooks": config.get("hooks") or {}, "process": config.get("process") or {},
                "namespaces": B.namespaces(config), "seccomp": None,
            }  # fmt: skip
            # Saved before anything is made: a create killed from here on (kill -9, the OOM
            # killer) leaves the record that `delete --force` needs to remove what it made.
            self._save(record)
            made_cgroups = C.create(version, dirs, linux.get("resources") or {}, linux.get("devices") or [])
            record["cgroups_made"] = made_cgroups
            program = _seccomp(self.root, linux.get("seccomp"))
            record["seccomp"] = program.hex() if program else None
            fifo = os.path.join(directory, "exec.fifo")
            os.mkfifo(fifo, 0o622)
            os.chmod(fifo, 0o622)  # past the umask: the process may be another user by the time it opens it
            dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(dir_fd)
            null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            fds.append(null_fd)
            console_fd = -1
            if console_socket:
                console_fd = connect_socket(console_socket)
                fds.append(console_fd)
            errr, errw = os.pipe2(os.O_CLOEXEC)
            gor, gow = os.pipe2(os.O_CLOEXEC)
            fds += [errr, errw, gor, gow]
            created_state = json.dumps(self.state_json(record, "created") | {"pid": 0}).encode()
            plan = B.build(config, rootfs, version, dirs, errw, gor, dir_fd, null_fd, console_fd, no_pivot, program,
                           created_state)  # fmt: skip
            fds += plan.fds
            pid = _launch(plan, errr, errw, gor, gow, preserve_fds, record, self)
            record["pid"] = pid
            record["pid_start"] = state.process_start_time(pid)
            self._save(record)
            if pid_file:
                write_pid_file(pid_file, pid)
        except BaseException:
            self._abort(cid, made_cgroups)
            raise
        finally:
            for fd in set(fds):
                try:
                    os.close(fd)
                except OSError:
                    pass
        return pid

    def _abort(self, cid: str, made_cgroups: list[str]) -> None:
        import shutil

        try:
            record = self.load(cid)
            pid = int(record.get("pid") or 0)
        except NotFound:
            record, pid = {}, 0
        if record.get("cgroup_dirs"):
            try:
                C.kill_all(record["cgroup_version"], record["cgroup_dirs"], signal.SIGKILL)
            except (OSError, IsolateError):
                pass
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = C.remove(made_cgroups)
        if left:
            warn(f"container {cid}: cgroup not removed: {'; '.join(left)}")
        shutil.rmtree(self._dir(cid), ignore_errors=True)

    # ---- start / state / kill / delete -------------------------------------------------------
    def start(self, cid: str) -> None:
        record = self.load(cid)
        status = self.status(record)
        if status == "stopped":
            raise ConfigError("cannot start a container that has stopped")
        if status != "created":
            raise ConfigError(f"cannot start an already {status} container")
        fifo = os.path.join(self._dir(cid), "exec.fifo")
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while True:
                if poller.poll(50) and os.read(fd, 1):
                    break
                if self.status(record) == "stopped":
                    raise ConfigError("cannot start a container that has stopped")
        finally:
            os.close(fd)
            try:
                os.unlink(fifo)
            except FileNotFoundError:
                pass
        hooks = (record.get("hooks") or {}).get("poststart") or []
        if hooks:
            try:
                H.run("poststart", hooks, json.dumps(self.state_json(record, "running")).encode())
            except H.HookError as exc:
                # runtime-spec: a failing poststart hook is logged, the container goes on.
                warn(str(exc))

    def kill(self, cid: str, sig: int, all_processes: bool = False) -> None:
        record = self.load(cid)
        status = self.status(record)
        if status == "stopped":
            raise ConfigError("container not running")
        if all_processes and record.get("cgroup_version"):
            C.kill_all(record["cgroup_version"], record["cgroup_dirs"], sig)
            return
        pidfd = os.pidfd_open(int(record["pid"]))
        try:
            signal.pidfd_send_signal(pidfd, sig)
        finally:
            os.close(pidfd)

    def delete(self, cid: str, force: bool = False) -> None:
        import shutil

        try:
            record = self.load(cid)
        except NotFound:
            if force:
                # a create killed before its first record left only its directory
                shutil.rmtree(self._dir(cid), ignore_errors=True)
                return
            raise
        status = self.status(record)
        if status not in ("stopped", "created") and not force:
            raise ConfigError(f"cannot delete container {cid} that is not stopped: {status}")
        version, dirs = record.get("cgroup_version"), record.get("cgroup_dirs") or {}
        if status != "stopped":
            if version and C.frozen(version, dirs):
                C.freeze(version, dirs, False)
            try:
                os.kill(int(record["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        left: list[str] = []
        if version and dirs:
            # Processes left in the cgroup (a container without its own pid namespace, or exec'd
            # ones) must not outlive it.
            if C.procs(version, dirs):
                C.kill_all(version, dirs, signal.SIGKILL)
            _wait_gone(int(record["pid"]), record.get("pid_start"))
            left = C.remove(record.get("cgroups_made") or [])
        shutil.rmtree(self._dir(cid), ignore_errors=True)
        hooks = (record.get("hooks") or {}).get("poststop") or []
        if hooks:
            try:
                H.run("poststop", hooks, json.dumps(self.state_json(record, "stopped")).encode())
            except H.HookError as exc:
                warn(str(exc))
        if left:
            # As runc: the container is gone, but a cgroup it leaves behind is the delete's failure.
            raise IsolateError(f"container {cid} deleted, but its cgroup was not removed: {'; '.join(left)}")

    def pause(self, cid: str, frozen: bool) -> None:
        record = self.load(cid)
        status = self.status(record)
        if frozen and status != "running":
            raise ConfigError(f"container not running: {status}")
        if not frozen and status != "paused":
            raise ConfigError(f"container not paused: {status}")
        if not record.get("cgroup_version"):
            raise ConfigError("pause needs the container's cgroup; it has none")
        C.freeze(record["cgroup_version"], record["cgroup_dirs"], frozen)

    def update(self, cid: str, resources: dict[str, Any]) -> None:
        record = self.load(cid)
        if self.status(record) == "stopped":
            raise ConfigError("container not running")
        C.apply(record["cgroup_version"], record["cgroup_dirs"], resources)

    def pids(self, cid: str) -> list[int]:
        record = self.load(cid)
        if not record.get("cgroup_version"):
            return [int(record["pid"])] if self.status(record) != "stopped" else []
        return C.procs(record["cgroup_version"], record["cgroup_dirs"])


def _wait_gone(pid: int, start: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while state.is_alive({"pid": pid, "pid_start": start}) and time.monotonic() < deadline:
        time.sleep(0.002)


def _rfc3339(when: float) -> str:
    secs = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((when - secs) * 1e9):09d}Z"


def _seccomp(root: str, doc: dict[str, Any] | None) -> bytes | None:
    if not doc:
        return None
    from isolate.plan import seccomp

    if doc.get("listenerPath"):
        raise ConfigError("linux.seccomp.listenerPath: seccomp user notification is not supported")
    profile = seccomp.profile_from_doc(doc, "linux.seccomp")
    with open(seccomp.cached_program(root, profile), "rb") as f:
        return f.read()


def connect_socket(path: str) -> int:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--console-socket {path}: cannot connect: {exc.strerror}") from None
    fd = sock.detach()
    os.set_inheritable(fd, False)
    return fd


def write_pid_file(path: str, pid: int) -> None:
    # No trailing newline: containerd parses the file as a bare number.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def _launch(plan: B.OciPlan, errr: int, errw: int, gor: int, gow: int, preserve_fds: int,
            record: dict[str, Any], runtime: Runtime) -> int:  # fmt: skip
    """Clone the container's first process, run the hooks at its sync point, and return its
    pid once it reports "created" (or raise what its setup reported)."""
    import gc

    own_pid_ns = -1
    if plan.join_pid_fd >= 0:
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        _libc.setns(plan.join_pid_fd, _libc.CLONE_NEWPID)
    try:
        pid = _libc.clone_fork(plan.clone_flags)
        if pid == 0:
            _child(plan, errr, gow, preserve_fds)
    finally:
        if own_pid_ns >= 0:
            _libc.setns(own_pid_ns, _libc.CLONE_NEWPID)
            os.close(own_pid_ns)
    gc.collect()
    record["pid"] = pid
    record["pid_start"] = state.process_start_time(pid)
    runtime._save(record)  # from here on, a failure's cleanup finds and kills the process
    os.close(errw)
    os.close(gor)
    try:
        if plan.uid_map:
            child.write_id_maps(pid, _id_map(plan.uid_map), _id_map(plan.gid_map))
            for path in plan.parent_joins:
                with open(path, "w") as f:
                    f.write(str(pid))
        hooks_state = json.dumps(runtime.state_json(record, "created")).encode()
        report = b""
        while True:
            chunk = os.read(errr, 65536)
            if not chunk:
                break
            if chunk == b"H" and not report:
                hooks = record.get("hooks") or {}
                H.run("prestart", hooks.get("prestart") or [], hooks_state)
                H.run("createRuntime", hooks.get("createRuntime") or [], hooks_state)
                H.run("createContainer", hooks.get("createContainer") or [], hooks_state, enter_pid=pid)
                os.write(gow, b"1")
                continue
            if chunk == b"R" and not report:
                return pid
            report += chunk
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise
    if report:
        raise child.decode_failure(report)
    raise IsolateError("the container's process exited during setup without a report")


def _id_map(maps: list[dict[str, int]]) -> list[tuple[int, int, int]]:
    """config.json's linux.uidMappings (or gidMappings) as (inside, outside, count)."""
    return [(m["containerID"], m["hostID"], m["size"]) for m in maps]


def _child(plan: B.OciPlan, errr: int, gow: int, preserve_fds: int) -> None:
    """The container's first process.  Never returns: execs the command or exits."""
    import gc

    errw = plan.errw
    try:
        gc.disable()
        os.close(errr)
        os.close(gow)
        os.setsid()
        if plan.uid_map:
            _wait_for_maps()
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        child.report(errw, "starting the container", exc)
        os._exit(child.EXIT_SETUP_FAILED)
    child.run(plan.steps, plan.root, plan, errw, keep_fds=3 + preserve_fds, what="starting the container")


def _wait_for_maps() -> None:
    # The uid map is written by the parent right after the clone: poll until it appears.
    for _ in range(5000):
        with open("/proc/self/uid_map") as f:
            if f.read().strip():
                break
        time.sleep(0.001)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
