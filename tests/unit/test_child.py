"""The child core every front end shares (isolate.process.child): setup, report, exec.

These fork a plain child (no namespaces), so they need neither root nor a sandbox.
"""

from __future__ import annotations

import errno
import os
import signal

import pytest

from isolate.errors import CommandNotExecutableError, CommandNotFoundError, SetupError
from isolate.plan.steps import Step
from isolate.process import child


class Command:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = env if env is not None else {"PATH": "/usr/bin:/bin"}


class Refuse(Step):
    """A step that fails as a mount refused by the kernel would."""

    what = "refusing"

    def apply(self, root: str) -> None:
        raise PermissionError(errno.EPERM, "refused")

    def shell(self, root: str) -> str:
        return f"mount --bind {root}/a {root}/b"


def open_inheritable_at(*fds: int) -> None:
    """In the child: /dev/null at each of ``fds``, inheritable."""
    null = os.open("/dev/null", os.O_RDONLY)
    for fd in fds:
        os.dup2(null, fd, inheritable=True)


def start(steps: list[Step], command: Command, fds: tuple[int, ...] = (), **kwargs: object) -> tuple[bytes, int, str]:
    """Fork, run the core in the child; (its report, its exit status, what it wrote to stdout)."""
    errr, errw = os.pipe2(os.O_CLOEXEC)
    outr, outw = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(errr)
        os.close(outr)
        os.dup2(outw, 1)
        open_inheritable_at(*fds)
        child.run(steps, "/", command, errw, **kwargs)  # type: ignore[arg-type]
    os.close(errw)
    os.close(outw)
    report = child.read_report(errr)
    with os.fdopen(outr, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return report, os.waitstatus_to_exitcode(status), out


def test_a_command_not_found_is_reported_and_exits_127() -> None:
    report, code, _ = start([], Command(["no-such-command-here"]))
    assert code == child.EXIT_NOT_FOUND
    failure = child.decode_failure(report)
    assert isinstance(failure, CommandNotFoundError)
    assert failure.errno == errno.ENOENT
    assert "no-such-command-here: command not found" in str(failure)


def test_a_file_that_is_not_executable_exits_126(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "data")
    with open(path, "w") as f:
        f.write("not a program\n")
    report, code, _ = start([], Command([path]))
    assert code == child.EXIT_NOT_EXECUTABLE
    assert isinstance(child.decode_failure(report), CommandNotExecutableError)


def test_a_failing_step_is_named_by_its_shell_form() -> None:
    report, code, _ = start([Refuse()], Command(["true"]))
    assert code == child.EXIT_SETUP_FAILED
    failure = child.decode_failure(report)
    assert type(failure) is SetupError
    assert failure.step == "mount --bind //a //b"
    assert failure.errno == errno.EPERM


def test_an_exec_lookup_error_speaks_in_its_own_words() -> None:
    class Lookup(Step):
        def apply(self, root: str) -> None:
            raise child.ExecLookupError("notfound", 'exec: "x": executable file not found in $PATH', errno.ENOENT)

    report, code, _ = start([Lookup()], Command(["x"]))
    assert code == child.EXIT_NOT_FOUND
    assert str(child.decode_failure(report)) == 'exec: "x": executable file not found in $PATH'


def test_success_leaves_no_report_and_signals_are_reset() -> None:
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        report, code, out = start([], Command(["sh", "-c", "grep ^SigIgn: /proc/self/status"]))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert report == b""
    assert code == 0
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (signal.SIGTERM - 1)), "SIGTERM stayed ignored across the exec"


def test_only_the_kept_descriptors_are_inherited() -> None:
    # As --preserve-fds: 3 .. keep_fds-1 are passed on, every other inheritable one is closed.
    check = "for fd in 3 40; do [ -e /proc/self/fd/$fd ] && echo $fd; done; true"
    _, _, kept = start([], Command(["sh", "-c", check]), fds=(3, 40), keep_fds=4)
    _, _, none = start([], Command(["sh", "-c", check]), fds=(3, 40))
    assert kept.split() == ["3"]
    assert none.split() == []


@pytest.mark.parametrize("kind,cls", [("notfound", CommandNotFoundError), ("noexec", CommandNotExecutableError),
                                      ("setup", SetupError)])  # fmt: skip
def test_decode_failure_maps_each_kind(kind: str, cls: type[SetupError]) -> None:
    failure = child.decode_failure(f"{kind}\0step\0{errno.EIO}\0it broke".encode())
    assert type(failure) is cls
    assert (failure.step, failure.errno, str(failure)) == ("step", errno.EIO, "it broke")
