"""Runs in a loop overlap their setup: a Sandbox builds the next sandbox while a command runs.

Each test checks what a user sees (fresh sandboxes, limits, stdio, errors) and what the
host keeps meanwhile: one waiting child with its cgroup and lock, gone after close(), after
the Sandbox is collected, and (through ``isolate gc``) after its caller was killed.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.commands import cli
from support.host import open_fds, processes_matching, sandbox_cgroups, sandbox_children, state_entries

from isolate import CommandNotFoundError, Limits, Sandbox
from isolate.plan.steps import Plan


def spare_of(box: Sandbox) -> object:
    assert len(box._spares) == 1, "no sandbox was built ahead"
    return box._spares[0]


def test_each_run_of_a_loop_gets_a_fresh_sandbox(busybox_root: Path) -> None:
    with Sandbox(busybox_root, spawn="direct") as box:
        seen = []
        for i in range(6):
            # Whatever a run leaves in its root or /tmp must not reach the next one.
            script = f"ls /mark* /tmp/t* 2>/dev/null | wc -l; touch /mark{i} /tmp/t{i}; hostname"
            result = box.run(["sh", "-c", script], capture=True)
            assert result.stdout.split() == [b"0", result.sandbox_id.encode()]
            seen.append(result.sandbox_id)
        assert len(set(seen)) == 6
        spare = spare_of(box)
        # The spare waits as a child of this process, in a cgroup of its own.
        assert spare.pid in sandbox_children()  # type: ignore[attr-defined]
        assert any(spare.plan.sandbox_id in d for d in sandbox_cgroups())  # type: ignore[attr-defined]
    assert box._spares == [] and sandbox_children() == [] and sandbox_cgroups() == []


def test_a_run_served_by_a_spare_keeps_its_limits_and_stdio(tmp_path: Path, marker: str) -> None:
    with Sandbox(spawn="direct", limits=Limits(memory="32M", memory_swap="32M", pids=16, wall_time=5)) as box:
        for _ in range(2):
            box.run(["true"])
        spare_of(box)
        # stdin, stdout and stderr are handed over with the command: pipes, files, inherited.
        result = box.run(["sh", "-c", "cat; echo err >&2"], input=b"in" * 50000, capture=True)
        assert (result.stdout, result.stderr) == (b"in" * 50000, b"err\n")
        out = tmp_path / "out"
        with open(out, "wb") as f:
            assert box.run(["echo", "to a file"], stdout=f).exit_code == 0
        assert out.read_bytes() == b"to a file\n"
        # The limits hold: a memory hog is OOM-killed, a fork loop stops at pids.max.
        hog = box.run(["python3", "-c", "x = bytearray(128 << 20)\nprint('survived')"], capture=True)
        assert hog.status == "oom-killed" and hog.stdout == b"" and "memory" in hog.limits_hit
        bomb = box.run(["sh", "-c", "while :; do sleep 5 & done", marker], capture=True)
        assert b"fork" in (bomb.stderr or b"").lower() and "pids" in bomb.limits_hit
        assert processes_matching(marker) == []


def test_errors_and_a_changed_configuration(busybox_root: Path) -> None:
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        box.run(["true"])
        old = spare_of(box)
        with pytest.raises(CommandNotFoundError, match="nope: command not found"):
            box.run(["nope"])  # the spare found no command: the same error as a cold start
        assert old not in box._spares
        assert not any(old.plan.sandbox_id in d for d in sandbox_cgroups())  # type: ignore[attr-defined]
        # A Sandbox changed between runs does not use what was built for the old settings.
        box.run(["true"])
        box.run(["true"])
        box.config.hostname = "changed"
        assert box.run(["hostname"], capture=True).stdout == b"changed\n"


def test_a_killed_spare_is_replaced_by_a_cold_start(busybox_root: Path) -> None:
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        box.run(["true"])
        spare = spare_of(box)
        os.kill(spare.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        time.sleep(0.1)
        assert box.run(["echo", "cold"], capture=True).stdout == b"cold\n"
    assert sandbox_cgroups() == []


def test_the_spare_holds_none_of_the_callers_descriptors(busybox_root: Path) -> None:
    box = Sandbox(busybox_root, spawn="direct")
    r, w = os.pipe()
    try:
        box.run(["true"])
        box.run(["true"])  # the spare is cloned while this runs, with r and w open here
        spare = spare_of(box)
        time.sleep(0.2)
        os.close(w)  # the reader must see its end-of-file: nobody else holds w
        w = -1
        assert os.read(r, 10) == b""
        fd_dir = f"/proc/{spare.pid}/fd"  # type: ignore[attr-defined]
        held = {os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)}
        assert os.readlink(f"/proc/self/fd/{r}") not in held
        assert len(held) <= 6, held  # /dev/null as stdio, its error pipe, its socket, its cgroup pipe
        # The zygote that cloned it (a fork of this process) keeps only its socket and /dev/null.
        from isolate.process import zygote

        assert zygote._zygote is not None
        zfds = f"/proc/{zygote._zygote.pid}/fd"
        assert sorted(os.readlink(f"{zfds}/{fd}").split(":")[0] for fd in os.listdir(zfds)) == [
            "/dev/null", "/dev/null", "/dev/null", "socket"]  # fmt: skip
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        box.close()


ZYGOTE_SIGNALS = """
import os, signal, sys
from isolate import Sandbox
from isolate.process import zygote

def caught(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))

signal.signal(signal.SIGUSR1, lambda *_: os.write(1, b"handled in %d\\n" % os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: None)
with Sandbox(sys.argv[1], spawn="direct") as box:
    box.run(["true"])
    box.run(["true"])
    assert len(box._spares) == 1
    print(caught(os.getpid()), caught(zygote._zygote.pid), flush=True)
    os.kill(zygote._zygote.pid, signal.SIGUSR1)  # as a signal sent to the process group would
    os.waitpid(zygote._zygote.pid, 0)
    print(box.run(["grep", "-E", "Sig(Cgt|Ign)", "/proc/self/status"], capture=True).stdout.decode())
"""


def test_the_zygote_runs_none_of_the_callers_signal_handlers(busybox_root: Path) -> None:
    # It clones without Python's fork hooks, which is sound only while it has no Python
    # signal handler (_libc.clone_fork); a caller's handler (a CLI forwarding signals to
    # its sandbox) has no business running there either.
    proc = subprocess.run([sys.executable, "-c", ZYGOTE_SIGNALS, str(busybox_root)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    caller, zygote = (int(n) for n in lines[0].split())
    usr1, term = 1 << (signal.SIGUSR1 - 1), 1 << (signal.SIGTERM - 1)
    assert caller & usr1 and caller & term  # the caller's handlers are installed...
    assert zygote == 0  # ...and the zygote catches nothing: SIGUSR1 ended it, no handler ran
    assert not any(line.startswith("handled") for line in lines)
    # The run after it (its spare was the dead zygote's child, still this caller's) is sound:
    # its command catches and ignores nothing (grep itself: busybox sh would ignore SIGQUIT).
    assert "SigCgt:\t0000000000000000" in lines and "SigIgn:\t0000000000000000" in lines


def test_a_collected_sandbox_takes_its_spare_along(busybox_root: Path) -> None:
    fds = open_fds()
    box = Sandbox(busybox_root, spawn="direct")
    box.run(["true"])
    box.run(["true"])
    spare_of(box)
    del box
    gc.collect()
    assert sandbox_children() == [] and sandbox_cgroups() == [] and open_fds() == fds


KILLED_CALLER = """
import sys, time
from isolate import Sandbox
box = Sandbox(sys.argv[1])
box.run(["true"])
box.run(["true"])
assert box._spares, "no spare"
print(box._spares[0].pid, flush=True)
time.sleep(100)
"""


def test_gc_removes_the_spare_of_a_killed_caller(busybox_root: Path) -> None:
    caller = subprocess.Popen([sys.executable, "-c", KILLED_CALLER, str(busybox_root)], stdout=subprocess.PIPE)
    try:
        assert caller.stdout is not None
        spare_pid = int(caller.stdout.readline())
        assert sandbox_cgroups(), "the spare has a cgroup"
    finally:
        caller.kill()
        caller.wait()
        if caller.stdout is not None:
            caller.stdout.close()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{spare_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)  # the spare dies with its caller (PR_SET_PDEATHSIG)
    assert not os.path.exists(f"/proc/{spare_pid}")
    assert cli("gc").returncode == 0
    assert sandbox_cgroups() == [] and not [e for e in state_entries() if "/locks/" in e]


def test_prestart_off_and_where_it_does_not_apply(busybox_root: Path, tmp_path: Path) -> None:
    for box in (
        Sandbox(busybox_root, spawn="direct", prestart=False),
        Sandbox(busybox_root, spawn="helper"),  # cloned in the helper process
        Sandbox(busybox_root, spawn="direct", volumes=[f"{tmp_path}:/v"]),  # sources resolved per run
        Sandbox(busybox_root, spawn="direct", cgroups=False),  # no cgroup to wait for
    ):
        for _ in range(3):
            assert box.run(["true"]).exit_code == 0
        assert box._spares == []
        assert sandbox_children() == []


def test_a_fork_of_the_caller_leaves_the_spare_alone(busybox_root: Path) -> None:
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        box.run(["true"])
        spare = spare_of(box)
        pid = os.fork()
        if pid == 0:  # a copy of the caller: it inherited the Sandbox, but not the spare's process
            try:
                ok = box.run(["echo", "child"], capture=True).stdout == b"child\n"
                box.close()
                os._exit(0 if ok else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert spare.alive()  # type: ignore[attr-defined]
        assert box.run(["echo", "parent"], capture=True).stdout == b"parent\n"


def test_a_spare_whose_cgroup_fails_leaves_nothing(busybox_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isolate.errors import HostSupportError
    from isolate.process import supervisor

    real, calls = supervisor._create_cgroup, []

    def second_fails(plan: object) -> object:
        calls.append(plan)
        if len(calls) == 2:  # the first is the run's own cgroup, the second the spare's
            raise HostSupportError("injected: the spare's cgroup cannot be made")
        return real(plan)  # type: ignore[arg-type]

    fds, state = open_fds(), state_entries()
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        monkeypatch.setattr(supervisor, "_create_cgroup", second_fails)
        assert box.run(["echo", "ran"], capture=True).stdout == b"ran\n"  # the run itself is unharmed
        assert len(calls) == 2 and box._spares == []
        # The spare was cloned before its cgroup failed: it was killed and reaped, its lock and
        # pipes closed, and nothing of it is left.
        assert sandbox_children() == [] and sandbox_cgroups() == []
        assert state_entries() == state and open_fds() - fds <= {zygote_fd()}
        monkeypatch.setattr(supervisor, "_create_cgroup", real)
        box.run(["true"])
        assert len(box._spares) == 1  # the next run prestarts again


def test_a_failed_clone_after_the_spares_cgroup_was_made_leaves_nothing(
    busybox_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from isolate.process import supervisor

    real_prestart, real_create, made = supervisor.Supervisor.prestart, supervisor._create_cgroup, []

    def unclonable(self: object, plan: Plan) -> object:
        plan.clone_flags |= 0x00000800  # CLONE_SIGHAND without CLONE_VM: clone(2) fails, EINVAL
        return real_prestart(self, plan)  # type: ignore[arg-type]

    def counted(plan: Plan) -> object:
        made.append(plan.sandbox_id)
        return real_create(plan)

    fds, state = open_fds(), state_entries()
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        monkeypatch.setattr(supervisor.Supervisor, "prestart", unclonable)
        monkeypatch.setattr(supervisor, "_create_cgroup", counted)
        assert box.run(["echo", "ran"], capture=True).stdout == b"ran\n"  # the run itself is unharmed
        # The caller made the spare's cgroup while the zygote tried to clone it; the clone
        # failed, and the cgroup and lock went with the error.
        assert len(made) == 2 and box._spares == []
        assert sandbox_children() == [] and sandbox_cgroups() == []
        assert state_entries() == state and open_fds() - fds <= {zygote_fd()}
        monkeypatch.setattr(supervisor.Supervisor, "prestart", real_prestart)
        box.run(["true"])
        assert len(box._spares) == 1  # the zygote is still in step: the next run prestarts


def _poisoned() -> object:
    raise RuntimeError("a plan that cannot be loaded")


class Poison:
    """A step that pickles, but whose unpickling (in the cloned child) raises."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_poisoned, ())


def _prestarts_changing(monkeypatch: pytest.MonkeyPatch, change: Callable[[Plan], None]) -> Callable[[], None]:
    """Every prestart passes its plan through ``change`` first; returns what undoes that."""
    from isolate.process import supervisor

    real = supervisor.Supervisor.prestart

    def changed(self: supervisor.Supervisor, plan: Plan) -> supervisor.Spare:
        change(plan)
        return real(self, plan)

    monkeypatch.setattr(supervisor.Supervisor, "prestart", changed)
    return lambda: monkeypatch.setattr(supervisor.Supervisor, "prestart", real)


def test_a_spare_whose_plan_cannot_be_loaded_fails_alone(busybox_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isolate.process import zygote

    def poisoned(plan: Plan) -> None:
        plan.steps.append(Poison())  # type: ignore[arg-type]
        plan.template = None  # sent whole, not as its template's identity

    fds, state = open_fds(), state_entries()
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        first = zygote._zygote
        undo = _prestarts_changing(monkeypatch, poisoned)
        box.run(["true"])  # its spare is cloned; the child, not the zygote, loads the plan and fails
        assert len(box._spares) == 1
        spare = box._spares[0]
        deadline = time.monotonic() + 10
        while spare.alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert not spare.alive()  # type: ignore[attr-defined]
        # The next run sees the dead spare, discards it (cgroup and lock) and starts cold.
        undo()
        assert box.run(["echo", "ran"], capture=True).stdout == b"ran\n"
        assert len(box._spares) == 1 and spare_of(box).alive()  # type: ignore[attr-defined]
        assert box.run(["echo", "from the spare"], capture=True).stdout == b"from the spare\n"
        assert zygote._zygote is first  # the zygote never saw the plan: still the same, in step
    assert sandbox_children() == [] and sandbox_cgroups() == []
    assert state_entries() == state and open_fds() - fds <= {zygote_fd()}


def test_a_template_the_zygote_cannot_load_costs_only_the_spare(
    busybox_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from isolate.plan import builder as planner
    from isolate.process import zygote

    def poisoned(plan: Plan) -> None:
        assert plan.template is not None
        bad = plan.template.plan.with_identity(plan.template.plan.identity())
        bad.steps.append(Poison())  # type: ignore[arg-type]
        plan.template = planner.Template(bad, plan.template.key, plan.template.made)

    fds, state = open_fds(), state_entries()
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        first = zygote._zygote
        undo = _prestarts_changing(monkeypatch, poisoned)
        # The zygote unpickles a template itself: this one fails there, so no spare is
        # cloned, its cgroup and lock go, and the run that asked for it is unharmed.
        assert box.run(["echo", "ran"], capture=True).stdout == b"ran\n"
        assert box._spares == [] and sandbox_children() == [] and sandbox_cgroups() == []
        assert state_entries() == state
        undo()
        box.run(["true"])
        assert box.run(["hostname"], capture=True).stdout != b""  # served by a spare again
        assert len(box._spares) == 1 and zygote._zygote is first  # the zygote lived on, in step
    assert sandbox_children() == [] and sandbox_cgroups() == []
    assert state_entries() == state and open_fds() - fds <= {zygote_fd()}


def test_a_template_the_zygote_dropped_is_sent_again(busybox_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isolate import sandbox
    from isolate.process import zygote

    replies: list[bytes] = []
    real_request = zygote.Zygote._request

    def recorded(self: zygote.Zygote, *args: object) -> tuple[bytes, BaseException | None]:
        reply, failure = real_request(self, *args)  # type: ignore[arg-type]
        replies.append(reply)
        return reply, failure

    monkeypatch.setattr(zygote.Zygote, "_request", recorded)
    monkeypatch.setattr(sandbox, "TEMPLATE_SECONDS", 3600.0)  # however slow this host: the same templates
    # One Sandbox per hostname: a template each, more than the zygote keeps.
    boxes = [Sandbox(busybox_root, spawn="direct", hostname=f"box{i}") for i in range(zygote._MAX_TEMPLATES + 2)]
    try:
        for box in boxes:
            box.run(["true"])
            box.run(["true"])  # its spare is the first made from its template: the template goes along
        assert b"miss" not in replies
        # The first box's template was dropped by the zygote, which says so; the caller
        # sends it again and the spare is built all the same.
        first = boxes[0]
        result = first.run(["hostname"], capture=True)
        assert result.stdout == b"box0\n"
        assert replies.count(b"miss") == 1 and len(first._spares) == 1
        assert first.run(["hostname"], capture=True).stdout == b"box0\n"  # served by that spare
    finally:
        for box in boxes:
            box.close()
    assert sandbox_children() == [] and sandbox_cgroups() == []


def zygote_fd() -> int:
    from isolate.process import zygote

    return zygote.socket_fd()


class _InterruptedSocket:
    """The zygote's socket, whose next reply is interrupted (as a Ctrl-C would) once."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.interrupted = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def recv(self, size: int) -> bytes:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return self.real.recv(size)  # type: ignore[attr-defined,no-any-return]


def test_an_interrupted_request_to_the_zygote_leaves_nothing(busybox_root: Path) -> None:
    from isolate.process import zygote

    fds, state = open_fds(), state_entries()
    with Sandbox(busybox_root, spawn="direct") as box:
        box.run(["true"])
        box.run(["true"])
        old = zygote._zygote
        assert old is not None
        old.sock = _InterruptedSocket(old.sock)  # type: ignore[assignment]
        # The interruption reaches the caller; the sandbox the zygote cloned meanwhile is
        # ended and reaped, and the zygote, out of step with its socket, is replaced.
        with pytest.raises(KeyboardInterrupt):
            box.run(["true"])
        assert zygote._zygote is None and not os.path.exists(f"/proc/{old.pid}")
        assert sandbox_children() == [] and sandbox_cgroups() == [] and state_entries() == state
        assert open_fds() <= fds  # (the old zygote's socket is gone too)
        assert box.run(["echo", "again"], capture=True).stdout == b"again\n"
        box.run(["true"])
        assert len(box._spares) == 1 and zygote._zygote is not None and zygote._zygote is not old
