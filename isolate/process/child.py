"""The child's side of every start: one setup sequence for ``isolate run``, ``isolate exec``,
``isolate-oci create`` and ``isolate-oci exec``.

Each front end clones or forks its child its own way (new namespaces, setns into a running
sandbox's, a zygote's spare), then hands over to :func:`run`: close the descriptors the
command must not inherit, reset the signals the caller changed, apply the plan's steps in
order, exec.  A setup failure travels back on a close-on-exec pipe (``errw``) as one record,
``kind \\0 what \\0 errno \\0 message``; end-of-file without a record means the exec
succeeded.  :func:`read_report` and :func:`decode_failure` are the parent's side of it.

Nothing here may import once the child runs its steps: after pivot_root the host's Python
is out of reach (hence no os.execvpe, which imports warnings, and no traceback module).
"""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import errno
import os

from isolate import _libc
from isolate.errors import CommandNotExecutableError, CommandNotFoundError, SetupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import NoReturn, Protocol

    from isolate.plan.steps import Step

    class Command(Protocol):
        """What is exec'd: a Plan, or a front end's own small record."""

        argv: list[str]
        env: dict[str, str]


# Dispositions a command must not inherit from isolate: Python ignores SIGPIPE and SIGXFSZ
# and handles SIGINT; an ignored signal stays ignored across execve(2).  SIGHUP, SIGTERM and
# SIGQUIT: a caller (nohup, a service manager) may have changed them; a container's process
# starts with the defaults, as under runc.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)

# Exit statuses of a child that could not start its command (docker's conventions).
EXIT_SETUP_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class ExecLookupError(Exception):
    """Raised by a step that looks the command up before the exec (the OCI front end's
    CheckExecutable) to report "not found" or "not executable" in its own words."""

    def __init__(self, kind: str, message: str, code: int) -> None:
        super().__init__(message)
        self.kind = kind  # "notfound" or "noexec"
        self.message = message
        self.code = code


def run(
    steps: Sequence[Step],
    root: str,
    command: Command,
    errw: int,
    *,
    keep_fds: int = 3,
    trace_fd: int = -1,
    what: str = "starting the sandbox",
    before_exec: tuple[str, Callable[[], None]] | None = None,
) -> NoReturn:
    """The child's setup, then the exec of ``command.argv``; never returns.

    Descriptors from ``keep_fds`` up become close-on-exec (the OCI front end passes
    ``--preserve-fds`` this way), signals are reset (:data:`RESET_SIGNALS`, nothing blocked),
    each step is applied in order (its shell form is written to ``trace_fd`` when tracing),
    ``before_exec`` (a description and a call: a spare waits there for its run's command)
    runs, and the command is exec'd.  A failure is reported on ``errw`` naming the step.
    """
    step: Step | None = None
    try:
        # Not dumpable until the exec (which makes the command dumpable again): once this process
        # is visible in the sandbox and its capabilities are dropped, a process there could
        # otherwise read its /proc/PID/exe (the runtime's binary, CVE-2019-5736), its descriptors
        # and memory, or ptrace it (CVE-2016-9962).
        _libc.prctl(_libc.PR_SET_DUMPABLE, 0)
        _libc.close_range_cloexec(keep_fds)
        for fd in range(3, keep_fds):
            try:
                os.set_inheritable(fd, True)
            except OSError:
                pass  # not open: nothing to pass on
        os.set_inheritable(errw, False)
        reset_signals()
        fault = os.environ.get("ISOLATE_FAULT")  # tests: isolate.faults
        for step in steps:
            apply_step(step, root, fault)
            if trace_fd >= 0:
                os.write(trace_fd, (step.shell(root) + "\n").encode())
        step = None
        if before_exec is not None:
            what, call = before_exec
            call()
        exec_command(command.argv, command.env, errw)
    except ExecLookupError as exc:
        exec_failed(errw, exc.kind, exc.code, exc.message)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        report(errw, describe(step, root) if step is not None else what, exc)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def apply_step(step: Step, root: str, fault: str | None) -> None:
    """``step.apply(root)``; first, the failure a test asked for at this kind of step, if any."""
    if fault:
        from isolate.faults import fire

        fire(fault, "step:" + type(step).__name__)
    step.apply(root)


def describe(step: Step, root: str) -> str:
    """How a failure names ``step``: its shell form, as --explain prints it."""
    try:
        return step.shell(root)
    except BaseException:  # noqa: BLE001 - a failure report must not fail
        return step.what


def reset_signals() -> None:
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def setup_stdio(stdio: Iterable[int]) -> None:
    """Make ``stdio`` the descriptors 0, 1 and 2, inheritable."""
    # Move the sources out of 0..2 first so that dup2 cannot overwrite one still needed.
    high = [os.dup(fd) if fd < 3 else fd for fd in stdio]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)


def exec_command(argv: list[str], env: dict[str, str], errw: int) -> NoReturn:
    """execve ``argv``, searching PATH as execvp(3) does; report and exit 126/127 if it fails."""
    candidates = [argv[0]] if "/" in argv[0] else [f"{d or '.'}/{argv[0]}" for d in env.get("PATH", "").split(":")]
    first_error: OSError | None = None
    last_error: OSError = FileNotFoundError(errno.ENOENT, "not found")
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            last_error = exc
            # As execvp(3): keep searching past ENOENT/ENOTDIR, report the first other error.
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and first_error is None:
                first_error = exc
    failure = first_error or last_error
    code = failure.errno or 0
    if code in (errno.ENOENT, errno.ENOTDIR):
        exec_failed(errw, "notfound", code, f"{argv[0]}: command not found in the sandbox (PATH={env.get('PATH', '')})")
    exec_failed(errw, "noexec", code, f"{argv[0]}: cannot execute: {os.strerror(code)}")


def exec_failed(errw: int, kind: str, code: int, message: str) -> NoReturn:
    """Report that the command could not be exec'd and exit as a shell would (127 or 126)."""
    try:
        os.write(errw, f"{kind}\0exec\0{code}\0{message}".encode())
    except OSError:
        pass  # the parent is gone: nobody to tell
    os._exit(EXIT_NOT_FOUND if kind == "notfound" else EXIT_NOT_EXECUTABLE)


def report(errw: int, what: str, exc: BaseException) -> None:
    """Send the parent the failure of ``what``; never raises."""
    try:
        if isinstance(exc, OSError):
            msg = f"{what} failed: {os.strerror(exc.errno) if exc.errno else exc}"
            code = exc.errno or 0
        else:  # a bug in isolate: say where, without importing traceback
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
            msg = f"{what} failed: {exc!r}{where}"
            code = 0
        os.write(errw, f"setup\0{what}\0{code}\0{msg}".encode())
    except BaseException:  # noqa: BLE001
        pass


def read_report(errr: int) -> bytes:
    """The parent's side: read ``errr`` to end-of-file and close it; b"" means the exec succeeded."""
    data = b""
    try:
        while chunk := os.read(errr, 65536):
            data += chunk
    finally:
        os.close(errr)
    return data


def decode_failure(data: bytes) -> SetupError:
    """The exception a child's report stands for."""
    kind, what, code, msg = data.decode(errors="replace").split("\0", 3)
    cls = {"notfound": CommandNotFoundError, "noexec": CommandNotExecutableError}.get(kind, SetupError)
    return cls(msg, step=what, errno=int(code))


def write_id_maps(pid: int, uid_map: Iterable[tuple[int, int, int]], gid_map: Iterable[tuple[int, int, int]],
                  deny_setgroups: bool = False) -> None:  # fmt: skip
    """Write a child's uid and gid maps (user_namespaces(7)): "inside outside count" lines.

    An unprivileged writer must deny setgroups first, and may map only its own ids.
    """
    if deny_setgroups:
        _write_proc(pid, "setgroups", "deny")
    _write_proc(pid, "uid_map", "".join(f"{a} {b} {c}\n" for a, b, c in uid_map))
    _write_proc(pid, "gid_map", "".join(f"{a} {b} {c}\n" for a, b, c in gid_map))


def _write_proc(pid: int, name: str, text: str) -> None:
    fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
