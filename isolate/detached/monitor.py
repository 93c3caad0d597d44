"""The monitor: one process that owns every detached sandbox of a state directory.

``isolate run -d`` hands its sandbox to the monitor (started on demand, in its own
session) over ``<state_dir>/monitor.sock``, the same SOCK_SEQPACKET protocol the spawn
helper speaks.  The monitor is the sandboxes' parent: it reaps them, enforces their time
limits, reads their cgroup's accounting and writes the result into their state record.
One process for all detached sandboxes, so an idle sandbox costs the host its own
processes and a few kilobytes here, not a Python interpreter each.

When nothing is running and nobody is connected, the monitor removes its socket and
exits.  If it is killed, its sandboxes die with it (PR_SET_PDEATHSIG): ``isolate ps``
shows them dead and ``isolate gc`` removes what they left.
"""

from __future__ import annotations

import _signal as signal
import errno
import fcntl
import os
import pickle
import select
import socket
import time

from isolate import _state as state
from isolate import faults
from isolate.errors import IsolateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from isolate.plan.steps import Plan

_MAX_MSG = 1 << 20
# How long a client waits for the monitor it started to listen (minutes on no real host).
START_TIMEOUT = 120.0
IDLE_EXIT = 1.0  # seconds with nothing running and nobody connected before the monitor exits


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "monitor.sock")


def protocol() -> str:
    """What a client and the monitor must share to hand a sandbox over: isolate's version and
    the fields of a pickled Plan.  A monitor started before isolate was upgraded keeps
    running while its sandboxes do, and a plan pickled by another version may not load there."""
    from isolate import __version__
    from isolate.plan.steps import Plan

    return f"isolate {__version__}, plan fields {','.join(Plan.__slots__)}"


class _Sandbox:
    __slots__ = ("plan", "record", "pid", "pidfd", "started", "deadline", "cpu_limit", "group", "reason")

    def __init__(self, plan: Plan, record: dict[str, Any], pid: int, pidfd: int) -> None:
        self.plan = plan
        self.record = record
        self.pid = pid
        self.pidfd = pidfd
        self.started = time.monotonic()
        limits = plan.limits
        self.deadline = None if limits.wall_time is None else self.started + limits.wall_time
        self.cpu_limit = limits.time if plan.cgroup_version else None
        self.group: Any = None
        if plan.cgroup_version:
            from isolate.cgroups import open_cgroup

            self.group = open_cgroup(plan.cgroup_version, plan.cgroup_dirs)
        self.reason: str | None = None


def serve(state_dir: str, ready: int = -1) -> None:
    """The monitor's main loop (run in a process of its own).

    ``ready``: a pipe written to once the socket listens, and closed, so that the client
    that started this monitor connects then, however long the start took (see _connect).
    """
    from isolate.process.supervisor import Supervisor
    from isolate.sandbox import build_result

    os.makedirs(state_dir, 0o700, exist_ok=True)
    lock = os.open(os.path.join(state_dir, "monitor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # Only a client that could not connect starts a monitor: one that holds the lock now is
    # winding down (its socket is gone), and this one takes over once it exited.
    fcntl.flock(lock, fcntl.LOCK_EX)
    path = socket_path(state_dir)
    try:
        os.unlink(path)  # left by a monitor that was killed: its lock is free, so it is gone
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    if ready >= 0:
        os.write(ready, b"1")
        os.close(ready)
    from isolate.process import zygote

    zygote.start()  # forked now, while this process is small; it clones every sandbox
    supervisor = Supervisor(zygote=True)
    import gc

    # Every sandbox is forked from here and may keep a Python init for days: keep the
    # collector off the objects it shares with them (gc.freeze), so pages stay shared.
    gc.freeze()
    running: dict[int, _Sandbox] = {}  # pidfd -> sandbox
    clients: dict[int, socket.socket] = {}
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    idle_since = time.monotonic()
    try:
        while True:
            if running or clients:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= IDLE_EXIT:
                # Idle: stop taking new clients first, then serve those already queued.
                os.unlink(path)
                listener.setblocking(False)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                clients[conn.fileno()] = conn
                poller.register(conn.fileno(), select.POLLIN)
                continue
            timeout = _next_check(running)
            if not running and not clients:
                timeout = max(0.0, IDLE_EXIT - (time.monotonic() - idle_since)) * 1000
            for fd, _ in poller.poll(timeout):
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    clients[conn.fileno()] = conn
                    poller.register(conn.fileno(), select.POLLIN)
                elif fd in clients:
                    if not _serve_client(clients[fd], supervisor, running, poller, state_dir):
                        poller.unregister(fd)
                        clients.pop(fd).close()
                elif fd in running:
                    box = running.pop(fd)
                    poller.unregister(fd)
                    _finish(box, supervisor, state_dir, build_result)
            _enforce_limits(running)
    finally:
        for box in list(running.values()):
            signal.pidfd_send_signal(box.pidfd, signal.SIGKILL)
            _finish(box, supervisor, state_dir, build_result)
        listener.close()
        os.close(lock)


def _next_check(running: dict[int, _Sandbox]) -> float | None:
    waits = []
    for box in running.values():
        if box.reason is None:
            if box.deadline is not None:
                waits.append(max(0.0, box.deadline - time.monotonic()) * 1000)
            if box.cpu_limit is not None:
                waits.append(20.0)  # CPU time is sampled, as in the attached run loop
    return min(waits) if waits else None


def _enforce_limits(running: dict[int, _Sandbox]) -> None:
    now = time.monotonic()
    for box in running.values():
        if box.reason is not None:
            continue
        if box.deadline is not None and now >= box.deadline:
            box.reason = "wall-time"
        elif box.cpu_limit is not None and box.group.cpu_usage() >= box.cpu_limit:
            box.reason = "cpu-time"
        if box.reason is not None:
            signal.pidfd_send_signal(box.pidfd, signal.SIGKILL)
            if box.plan.share_pid and box.group is not None:
                box.group.kill_all()


def _serve_client(
    conn: socket.socket, supervisor: Any, running: dict[int, _Sandbox], poller: Any, state_dir: str
) -> bool:
    try:
        # stdin, stdout, stderr, and the record directory's lock (held until the record is written)
        data, fds, _, _ = socket.recv_fds(conn, _MAX_MSG, 4)
    except OSError:
        return False
    if not data:
        return False
    back: list[int] = []
    try:
        # The envelope holds only built-in types, so that a client of another version gets
        # a clear answer instead of an error from unpickling its plan here.
        message = pickle.loads(data)
        if not (isinstance(message, tuple) and len(message) == 4 and message[0] == "start"):
            raise IsolateError("monitor: unknown request (a client of another isolate version?)")
        _, theirs, plan_bytes, record = message
        if theirs != protocol():
            raise IsolateError(
                f"the isolate monitor of {state_dir} (pid {os.getpid()}) runs {protocol()!r}, this client "
                f"{theirs!r}: it was started before isolate changed and stays while its sandboxes run; "
                "stop them (isolate ps, isolate rm -f) or use another state directory"
            )
        plan = pickle.loads(plan_bytes)
        faults.point("monitor:plan")
        pid, pidfd = supervisor.start(plan, tuple(fds[:3]))
        try:
            faults.point("monitor:record")
            # Who records its end: a monitor started after this one died must not pass for it.
            record.update(status="running", pid=pid, pid_start=state.process_start_time(pid), started=time.time(),
                          monitor=os.getpid(), monitor_start=_own_start())  # fmt: skip
            state.write_record(state_dir, record)
        except BaseException:
            # The client hears of the failure and records nothing: the sandbox must not run on
            # unrecorded, so it goes, and its cgroup with it.
            os.close(pidfd)
            supervisor.kill(pid)
            supervisor.finish(pid)
            raise
        box = _Sandbox(plan, record, pid, pidfd)
        running[pidfd] = box
        poller.register(pidfd, select.POLLIN)
        reply: Any = ("started", pid)
    except OSError as exc:  # the host refused: sent back as one line naming what failed
        from isolate.process.supervisor import host_failure

        reply = ("error", host_failure(f"the monitor of {state_dir} starting the sandbox", exc))
    except Exception as exc:  # noqa: BLE001 - sent back and raised in the client
        reply = ("error", exc)
    finally:
        for fd in fds:
            os.close(fd)
    try:
        socket.send_fds(conn, [pickle.dumps(reply)], back)
    except OSError:
        pass
    return True


_started_at: list[int | None] = []


def _own_start() -> int | None:
    if not _started_at:
        _started_at.append(state.process_start_time(os.getpid()))
    return _started_at[0]


def _finish(box: _Sandbox, supervisor: Any, state_dir: str, build_result: Any) -> None:
    try:
        status, utime, stime, stats = supervisor.finish(box.pid)
        faults.point("monitor:exited")
        result = build_result(box.plan, status, utime, stime, stats, time.monotonic() - box.started,
                              timeout_reason=box.reason)  # fmt: skip
        box.record.update(status="stopped", finished=time.time(), exit_code=result.exit_code,
                          result=result.to_dict())  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded, the monitor goes on for the others
        box.record.update(status="stopped", finished=time.time(), exit_code=125, error=str(exc))
    finally:
        os.close(box.pidfd)
    if state.read_record(state_dir, str(box.record["id"])) is not None:  # not removed meanwhile
        state.write_record(state_dir, box.record)


def start_detached(state_dir: str, plan: Plan, record: dict[str, Any], stdio: tuple[int, ...]) -> int:
    """Hand a sandbox to the monitor (starting one if none runs); returns its pid.  ``stdio``:
    stdin, stdout, stderr, then optionally a descriptor the monitor keeps until it wrote the record."""
    sock = _connect(state_dir)
    try:
        message = ("start", protocol(), pickle.dumps(plan, pickle.HIGHEST_PROTOCOL), record)
        socket.send_fds(sock, [pickle.dumps(message, pickle.HIGHEST_PROTOCOL)], list(stdio))
        data, _, _, _ = socket.recv_fds(sock, _MAX_MSG, 1)
    finally:
        sock.close()
    if not data:
        raise IsolateError("the isolate monitor exited before starting the sandbox; see <state_dir>/monitor.log")
    try:
        reply = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - an exception class this version does not have
        reply = ("error", exc)
    if reply[0] == "error":
        error = reply[1]
        if isinstance(error, (IsolateError, OSError)):
            raise error
        # A monitor of an older isolate fails on this version's request in its own way.
        raise IsolateError(
            f"the isolate monitor of {state_dir} failed to take the sandbox ({type(error).__name__}: {error}); "
            "if it was started by another version of isolate, it stays while its sandboxes run: stop them "
            "(isolate ps, isolate rm -f) or use another state directory"
        )
    return int(reply[1])


def _connect(state_dir: str) -> socket.socket:
    path = socket_path(state_dir)
    sock = _try_connect(path)
    if sock is not None:
        return sock
    # Nobody listens: start a monitor, one client at a time.  The others wait on this lock
    # (as long as the start takes: a slow host must not lose a start) and then find it
    # listening; starting one each would only slow the one that will serve them all.
    os.makedirs(state_dir, 0o700, exist_ok=True)
    lock = os.open(os.path.join(state_dir, "monitor.start"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # More than once: a monitor this client started can go idle and exit before the
        # client gets to connect (IDLE_EXIT), when the host stalls for that long.
        for _ in range(5):
            sock = _try_connect(path)
            if sock is not None:
                return sock
            _spawn_monitor(state_dir)
    finally:
        os.close(lock)
    raise IsolateError(f"cannot reach the isolate monitor at {path}; see {state_dir}/monitor.log")


def _try_connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
        return sock
    except OSError as exc:
        sock.close()
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            raise
    return None


def _spawn_monitor(state_dir: str) -> None:
    """Start a monitor that is nobody's child here (the launcher forks it and exits at once);
    returns once it listens, or once it exited without (its log says why)."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    from isolate.detached.monitor import serve\n"
        f"    serve({state_dir!r}, int(sys.argv[1]))\n"
    )
    try:
        faults.point("monitor:spawn")
    except OSError as exc:
        from isolate.process.supervisor import host_failure

        raise host_failure(f"starting the monitor of {state_dir}", exc) from exc
    readr, readw = os.pipe2(os.O_CLOEXEC)
    try:
        with open(os.path.join(state_dir, "monitor.log"), "ab") as log:
            launcher = subprocess.Popen(
                [sys.executable, "-c", code, str(readw)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, pass_fds=(readw,),
            )  # fmt: skip
        os.close(readw)
        readw = -1
        launcher.wait()
        # b"1" once it listens; b"" (end of file) when it exited first.  Bounded: a monitor
        # that waits behind a predecessor hung with monitor.lock would hold every client.
        if not select.select([readr], [], [], START_TIMEOUT)[0]:
            raise IsolateError(
                f"the isolate monitor did not start listening within {START_TIMEOUT:.0f} s; "
                f"see {state_dir}/monitor.log, and end a stuck monitor (pgrep -f 'isolate.detached.monitor import')"
            )
        os.read(readr, 1)
    finally:
        os.close(readr)
        if readw >= 0:
            os.close(readw)
