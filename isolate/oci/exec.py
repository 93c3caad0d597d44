"""``isolate-oci exec``: another process in a running container (setns(2) into its namespaces).

Two forks, as for ``isolate exec``: the first joins the cgroup and the namespaces (a pid
namespace applies to children only), the second becomes the process.  With ``--detach``
the first one exits once the process exec'd, so the process is reparented to the engine's
subreaper, which reaps it; without, it waits and passes the exit status on.
"""

from __future__ import annotations

import _signal as signal
import os

from isolate import _libc
from isolate import _state as state
from isolate.errors import ConfigError
from isolate.oci import bundle as B
from isolate.oci import steps as S
from isolate.oci.runtime import Runtime
from isolate.plan.seccomp import LoadSeccomp
from isolate.plan.security import ExecOnlyBeneathRoot, last_cap
from isolate.plan.steps import Chdir, JoinCgroup, NoNewPrivs
from isolate.process import child

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NS_FILES = {"user": "user", "cgroup": "cgroup", "ipc": "ipc", "uts": "uts", "network": "net", "pid": "pid",
            "mount": "mnt"}  # fmt: skip


class _Target:
    __slots__ = ("argv", "env")

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env


def execute(runtime: Runtime, cid: str, process: dict[str, Any], detach: bool, pid_file: str | None,
            console_socket: str | None, preserve_fds: int = 0) -> int:  # fmt: skip
    """Start ``process`` in the container; returns its exit status (0 when detached)."""
    record = runtime.load(cid)
    status = runtime.status(record)
    if status == "stopped":
        raise ConfigError("cannot exec in a stopped container")
    if status == "paused":
        raise ConfigError("cannot exec in a paused container")
    argv = [str(a) for a in process.get("args") or []]
    if not argv:
        raise ConfigError("exec: no command: give the process's args (--process FILE or ID CMD...)")
    if process.get("terminal") and not console_socket:
        raise ConfigError("exec: process.terminal needs --console-socket")
    pid = int(record["pid"])
    fds: list[int] = []  # the namespaces to enter, in order
    console_fd = -1
    try:
        # User namespace first: the others belong to it.  Mount namespace last: the paths
        # above are the host's until then.
        for kind in ("user", "cgroup", "ipc", "uts", "network", "pid", "mount"):
            if kind not in dict(record.get("namespaces") or []):
                continue
            path = f"/proc/{pid}/ns/{NS_FILES[kind]}"
            if os.readlink(path) != os.readlink(f"/proc/self/ns/{NS_FILES[kind]}"):
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        if state.process_start_time(pid) != record.get("pid_start"):
            raise ConfigError("cannot exec in a stopped container")
        if console_socket:
            from isolate.oci.runtime import connect_socket

            console_fd = connect_socket(console_socket)
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in process.get("env") or [])
        user = process.get("user") or {}
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        steps: list[Any] = []
        if process.get("terminal"):
            size = process.get("consoleSize") or {}
            steps.append(S.Console(console_fd, uid, int(size.get("height", 0)), int(size.get("width", 0))))
        steps.append(Chdir(process.get("cwd") or "/", create=False))
        steps.append(ExecOnlyBeneathRoot())  # as the container's first process (bundle.build)
        rlimits = [(B.RLIMITS[i["type"]], B.rlimit_value(i.get("soft", 0)), B.rlimit_value(i.get("hard", 0)))
                   for i in process.get("rlimits") or [] if i.get("type") in B.RLIMITS]  # fmt: skip
        if rlimits:
            import resource  # noqa: F401 - imported before the setns, see steps.py

            steps.append(S.SetRlimits(rlimits))
        steps.append(S.CheckExecutable(argv[0], env.get("PATH", "")))
        nnp = bool(process.get("noNewPrivileges"))
        program = bytes.fromhex(record["seccomp"]) if record.get("seccomp") else None
        seccomp = LoadSeccomp(program) if program else None
        if seccomp is not None and not nnp:
            steps.append(seccomp)
        if nnp:
            steps.append(NoNewPrivs())
        steps.append(S.Identity(uid, gid, [int(g) for g in user.get("additionalGids") or []],
                                int(user["umask"]) if user.get("umask") is not None else None,
                                process.get("capabilities"), last_cap()))  # fmt: skip
        if seccomp is not None and nnp:
            steps.append(seccomp)
        from isolate.cgroups.base import join_files

        joins = join_files(record["cgroup_version"], record["cgroup_dirs"]) if record.get("cgroup_version") else []
        return _run(fds, joins, steps, _Target(argv, env), detach, pid_file, preserve_fds)
    finally:
        for fd in [*fds, console_fd]:
            if fd >= 0:
                os.close(fd)


def forward_signals(pid: int) -> None:
    """Relay the signals a caller sends to stop or resize what it waits for, to ``pid``."""

    def relay(sig: int, _frame: object) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGUSR1,
                signal.SIGUSR2):  # fmt: skip
        signal.signal(sig, relay)


def _run(ns_fds: list[int], joins: list[str], steps: list[Any], target: _Target, detach: bool,
         pid_file: str | None, preserve_fds: int) -> int:  # fmt: skip
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pidr, pidw = os.pipe2(os.O_CLOEXEC)
    try:
        middle = os.fork()
        if middle == 0:
            _middle(ns_fds, joins, steps, target, errw, pidw, detach, preserve_fds)
        os.close(errw)
        errw = -1
        os.close(pidw)
        pidw = -1
        fd, errr = errr, -1
        report = child.read_report(fd)
        pid_text = os.read(pidr, 64)
    finally:
        for fd in (errr, errw, pidr, pidw):
            if fd >= 0:
                os.close(fd)
    if report:
        os.waitpid(middle, 0)
        raise child.decode_failure(report)
    process_pid = int(pid_text or b"0")
    if pid_file and process_pid:
        from isolate.oci.runtime import write_pid_file

        write_pid_file(pid_file, process_pid)
    if detach:
        os.waitpid(middle, 0)
        return 0

    forward_signals(process_pid)
    return wait_status(middle)


def wait_status(pid: int) -> int:
    """Reap ``pid`` and return its status as a shell reports it (128 + N for signal N).
    os.waitpid retries by itself when a relayed signal interrupts it (PEP 475)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _middle(ns_fds: list[int], joins: list[str], steps: list[Any], target: _Target, errw: int, pidw: int,
            detach: bool, preserve_fds: int) -> None:  # fmt: skip
    what = "joining the container"
    try:
        JoinCgroup(joins).apply("/")
        what = "setns"
        for fd in ns_fds:
            _libc.setns(fd, 0)
        process = os.fork()
        if process == 0:
            what = "preparing the process"
            try:
                os.setsid()
            except BaseException as exc:  # noqa: BLE001 - everything must reach the caller
                child.report(errw, what, exc)
                os._exit(child.EXIT_SETUP_FAILED)
            child.run(steps, "/", target, errw, keep_fds=3 + preserve_fds, what=what)
        os.write(pidw, str(process).encode())
        os.close(pidw)
        os.close(errw)
        if detach:
            os._exit(0)
        forward_signals(process)
        _, status = os.waitpid(process, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)
    except BaseException as exc:  # noqa: BLE001
        child.report(errw, what, exc)
    finally:
        os._exit(child.EXIT_SETUP_FAILED)
