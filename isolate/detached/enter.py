"""``isolate exec``: run a command inside a running sandbox (setns(2) into all its namespaces).

The caller forks a child that joins the sandbox's cgroup, enters its cgroup, ipc, uts,
net, pid and mount namespaces (setns into a mount namespace also moves the root and
working directory to that namespace's root: the sandbox's, after its pivot_root), and
forks once more, because a pid namespace applies only to the children of whoever entered
it.  The grandchild takes the sandbox's working directory, no_new_privs, user and
environment, and execs.  Nothing is imported after the setns calls: the host's Python
library is not in the sandbox.
"""

from __future__ import annotations

import _signal as signal
import os

from isolate import _libc
from isolate import _state as state
from isolate.errors import ConfigError
from isolate.plan.security import ExecOnlyBeneathRoot
from isolate.plan.steps import Chdir, JoinCgroup, NoNewPrivs, SetUser
from isolate.process import child

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Order matters: the mount namespace last (the paths above are the host's until then).
NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


class _Target:
    """What child.run execs: the command and its environment."""

    __slots__ = ("argv", "env")

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env


def prepare(record: dict[str, Any], argv: list[str], env: dict[str, str] | None = None,
            user: tuple[int, int] | None = None, workdir: str | None = None, tty: bool = False) -> Any:  # fmt: skip
    """Open the sandbox's namespaces now, while its pid is known to be it; returns a launcher."""
    from isolate._state import status_of

    if status_of(record) != "running":
        raise ConfigError(f"{record['name']}: cannot exec: the sandbox is {status_of(record)}")
    if not argv:
        raise ConfigError("no command given: isolate exec NAME CMD [ARGS...]")
    pid = int(record["pid"])
    fds: list[int] = []
    try:
        for ns in NAMESPACES:
            path = f"/proc/{pid}/ns/{ns}"
            if os.readlink(path) != os.readlink(f"/proc/self/ns/{ns}"):
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        if state.process_start_time(pid) != record.get("pid_start"):
            raise ConfigError(f"{record['name']}: cannot exec: the sandbox is dead")
    except FileNotFoundError:
        for fd in fds:
            os.close(fd)
        raise ConfigError(f"{record['name']}: cannot exec: the sandbox is dead") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    from isolate.cgroups.base import join_files

    dirs = {k: str(v) for k, v in (record.get("cgroup_dirs") or {}).items()}
    joins = join_files(str(record.get("cgroup_version")), dirs) if dirs else []
    full_env = dict(record.get("env") or {})
    full_env.update(env or {})
    sandbox_user = record.get("user")
    launcher = _Launcher(
        fds, joins, _Target(list(argv), full_env), user or (tuple(sandbox_user) if sandbox_user else None),
        workdir or str(record.get("workdir") or "/"), tty,
    )  # fmt: skip
    # The sandbox's defences, in the same order as its own setup (builder.build_plan).
    from isolate.plan.seccomp import LoadSeccomp
    from isolate.plan.security import DropCapabilities

    if record.get("caps") is not None:
        launcher.drop_caps = DropCapabilities(list(record["caps"]), int(record["cap_last"]))
    if record.get("seccomp"):
        launcher.seccomp = LoadSeccomp(bytes.fromhex(str(record["seccomp"])))
    launcher.no_new_privs = bool(record.get("no_new_privs", True))
    return launcher


class _Launcher:
    def __init__(self, ns_fds: list[int], joins: list[str], target: _Target, user: Any, workdir: str,
                 tty: bool) -> None:  # fmt: skip
        self.ns_fds = ns_fds
        self.joins = joins
        self.target = target
        self.user = user
        self.workdir = workdir
        self.tty = tty
        self.drop_caps: Any = None
        self.seccomp: Any = None
        self.no_new_privs = True
        self.size = (0, 0)

    def start(self, stdio: tuple[int, int, int]) -> int:
        """Fork the entering child; returns its pid once the command was exec'd (or raises)."""
        if self.tty:
            from isolate.process.terminal import terminal_size

            self.size = terminal_size()  # the caller's: stdin is about to be a socket
        errr, errw = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(errr)
                self._child(stdio, errw)
            os.close(errw)
            errw = -1
            report = child.read_report(errr)
        finally:
            if errw >= 0:
                os.close(errw)
                os.close(errr)
            for fd in self.ns_fds:
                os.close(fd)
        if report:
            os.waitpid(pid, 0)
            raise child.decode_failure(report)
        return pid

    def steps(self) -> list[Any]:
        """The command's setup inside the sandbox: its defences in the same order as the
        sandbox's own (builder.build_plan)."""
        steps: list[Any] = []
        if self.tty:  # stdin is a socket to isolate: the pty comes from the sandbox's devpts
            from isolate.process.terminal import TerminalFromSandbox

            steps.append(TerminalFromSandbox(self.user[0] if self.user else 0, *self.size))
        steps.append(Chdir(self.workdir, create=False))
        if self.no_new_privs:
            steps.append(NoNewPrivs())
            # The sandbox's own processes got it with no_new_privs (builder.build_plan): both
            # are left out only for --privileged.
            steps.append(ExecOnlyBeneathRoot())
        if self.drop_caps is not None:
            steps.append(self.drop_caps)
        if self.user:
            steps.append(SetUser(self.user[0], self.user[1]))
        if self.seccomp is not None:
            steps.append(self.seccomp)
        return steps

    def _child(self, stdio: tuple[int, int, int], errw: int) -> None:
        what = "joining the sandbox"
        try:
            steps = self.steps()  # made before the setns: nothing is imported after it
            JoinCgroup(self.joins).apply("/")
            what = "setns"
            for fd in self.ns_fds:
                _libc.setns(fd, 0)
            command = os.fork()
            if command == 0:
                what = "preparing the command"
                os.setsid()
                child.setup_stdio(stdio)
                child.run(steps, "/", self.target, errw, what=what)
            os.close(errw)

            def relay(sig: int, _frame: object) -> None:
                try:
                    os.kill(command, sig)
                except ProcessLookupError:
                    pass

            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH):
                signal.signal(sig, relay)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])  # `isolate exec` held them until now
            _, status = os.waitpid(command, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the caller
            child.report(errw, what, exc)
        finally:
            os._exit(child.EXIT_SETUP_FAILED)
