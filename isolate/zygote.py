"""The zygote: a copy of the caller, forked once, that clones the sandboxes built ahead.

Every fork or clone write-protects all of the forking process's memory, so each page it
writes afterwards faults once more (about 450 faults, 0.5 ms per run of a small caller
here), and the clone copies its page tables.  A Sandbox run in a loop clones its next
sandbox on every run (supervisor.Spare); handing those clones to this process, which does
nothing else, takes both costs off the caller, and the clone runs on another CPU while the
caller makes the cgroup.  CLONE_PARENT makes each sandbox the caller's own child all the
same (clone(2)), so the caller waits for it, signals it and reads its status exactly as
if it had cloned it itself.

The zygote holds none of the caller's descriptors (its stdio is /dev/null), has no other
work, and exits when the caller closes its socket or dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import _thread
import errno
import os
import pickle
import socket

from . import _libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .spec import Plan

NAME = b"isolate-zygote"  # its comm, as ps shows it
_MAX_PLAN = 1 << 22
_lock = _thread.allocate_lock()
_zygote: Zygote | None = None


class Zygote:
    """The caller's end: one request at a time (see :func:`clone`)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                _serve(theirs.fileno(), parent)
            finally:
                os._exit(0)
        theirs.close()
        self.sock = ours
        self.pid = pid
        self.owner = parent
        self.broken = False
        self.sent = False  # a request is out and its reply not read

    def clone(self, plan: Plan, fds: list[int], spare: bool, meanwhile: Callable[[], None] | None = None) -> int:
        """Clone ``plan``'s child; its pid.  ``fds``: its error pipe, its cgroup pipe, then its
        spare socket (``spare``: it waits at its exec for the run) or its stdin, stdout, stderr.

        ``meanwhile`` runs here while the zygote clones (the caller's cgroup work overlaps the
        clone's ~1 ms); when it raises, the child is killed and reaped and the error raised.
        """
        # The header is all the zygote reads; the child unpickles the plan (see _start).
        header = (b"S" if spare else b"R") + plan.clone_flags.to_bytes(8, "little") + (b"1" if plan.init else b"0")
        message = header + pickle.dumps(plan, pickle.HIGHEST_PROTOCOL)
        failure: BaseException | None = None
        try:
            socket.send_fds(self.sock, [message], fds)
            self.sent = True
            if meanwhile is not None:
                try:
                    meanwhile()
                except BaseException as exc:  # noqa: BLE001 - re-raised once the child is gone
                    failure = exc
            reply = self.sock.recv(64)
            self.sent = False
        except BaseException:
            # Interrupted between request and reply (a signal, a dead zygote): the reply
            # still queued would answer the next request.  This zygote is done (abandon).
            self.broken = True
            raise
        if not reply:
            raise BrokenPipeError(errno.EPIPE, "the zygote process is gone")
        kind, _, value = reply.partition(b" ")
        if kind != b"pid":
            code = int(value)
            raise failure or OSError(code, f"clone: {os.strerror(code)}")
        if failure is not None:
            os.kill(int(value), signal.SIGKILL)  # our child (CLONE_PARENT), never reaped: its pid is its own
            os.waitpid(int(value), 0)
            raise failure
        return int(value)

    def abandon(self) -> None:
        """After an interrupted request: end the sandbox it may have cloned, then the zygote."""
        reply = b""
        if self.sent:
            try:
                self.sock.settimeout(2.0)  # it answers within a clone's time
                reply = self.sock.recv(64)
            except OSError:
                pass
        kind, _, value = reply.partition(b" ")
        if kind == b"pid":
            pid = int(value)
            os.kill(pid, signal.SIGKILL)  # our child (CLONE_PARENT), never reaped: its pid is its own
            os.waitpid(pid, 0)
        self.close()

    def close(self) -> None:
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)  # it exits at the end-of-file of its socket
        except ChildProcessError:
            pass


def start() -> None:
    """Fork the zygote now, while this process is small (the monitor does, before any sandbox)."""
    with _lock:
        _ensure()


def _ensure() -> Zygote:
    global _zygote
    if _zygote is not None and _zygote.owner != os.getpid():
        _zygote = None  # inherited by a fork of the caller: that zygote is not this process's child
    if _zygote is None:
        _zygote = Zygote()
        import atexit

        # Reap it at exit: an orphan's zombie waits for PID 1, which need not reap.
        atexit.register(_shutdown, _zygote)
    return _zygote


def clone(plan: Plan, fds: list[int], spare: bool = True, meanwhile: Callable[[], None] | None = None) -> int:
    """Clone ``plan``'s sandbox from the zygote (started on first use, again if it died);
    ``meanwhile`` runs once, while it clones (see Zygote.clone)."""
    global _zygote
    done = False

    def once() -> None:  # a retry with a fresh zygote must not make the cgroup twice
        nonlocal done
        if meanwhile is not None and not done:
            done = True
            meanwhile()

    with _lock:
        for attempt in (1, 2):
            zygote = _ensure()
            try:
                return zygote.clone(plan, fds, spare, once)
            except (BrokenPipeError, ConnectionResetError):
                zygote.close()
                _zygote = None
                if attempt == 2:
                    raise
            except BaseException:
                if zygote.broken:  # out of step with its socket: start a new one next time
                    _zygote = None
                    zygote.abandon()
                raise
    raise AssertionError("unreachable")


def _shutdown(zygote: Zygote) -> None:
    if zygote.owner == os.getpid() and zygote.sock.fileno() >= 0:
        zygote.close()


def socket_fd() -> int:
    """The caller's end of the zygote's socket, or -1 (tests tell it from a leaked descriptor)."""
    return _zygote.sock.fileno() if _zygote is not None and _zygote.owner == os.getpid() else -1


def _serve(fd: int, parent: int) -> None:
    """The zygote's loop: clone each plan it receives as a child of its own parent."""
    import gc

    from . import spawn, spec  # noqa: F401  (loaded once here, not in every child: see _start)

    _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return  # the caller died before prctl took effect
    _libc.prctl_set_name(NAME)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.closerange(3, fd)
    os.closerange(fd + 1, 0x7FFFFFFF)
    # The caller's Python signal handlers are not the zygote's business (a CLI's would
    # forward signals to sandboxes from here), and without any, it may clone without
    # Python's fork hooks (see _libc.clone_fork): a forked process has a single thread.
    for sig in range(1, signal.NSIG):
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    # Nothing it allocates lives long; a collection would only write to (and so copy) pages
    # it shares with the caller.
    gc.disable()
    sock = socket.socket(fileno=fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, _MAX_PLAN, 5)
        except OSError:
            return
        if not message:
            return  # the caller closed its end
        try:
            spare = message[:1] == b"S"
            flags = int.from_bytes(message[1:9], "little")
            errw, gor, *rest = fds
            if message[9:10] == b"1":
                from . import init  # noqa: F401  (loaded once here, not in every child)
            pid = _libc.clone_fork(flags | _libc.CLONE_PARENT, fork_hooks=False)
            if pid == 0:
                _libc.prctl_set_name(b"isolate-spare" if spare else b"isolate-child")  # not the zygote's, in ps
                _start(message, spare, errw, gor, rest)  # never returns
            reply = b"pid %d" % pid
        except OSError as exc:
            reply = b"err %d" % (exc.errno or errno.EIO)
        except Exception:  # noqa: BLE001 - a bad request must not end the zygote
            reply = b"err %d" % errno.EINVAL
        finally:
            for received in fds:
                os.close(received)
        sock.send(reply)


def _start(message: bytes, spare: bool, errw: int, gor: int, rest: list[int]) -> None:
    """The cloned child: unpickle its plan, then build the sandbox (spawn._child).

    The plan is unpickled here, not in the zygote: the objects it makes would be written
    into pages the zygote shares with the spares still alive, so each run the zygote would
    copy them (about 140 page faults), and the child again when it reads the plan.
    """
    from .spawn import _child, _report
    from .spec import AwaitCgroup

    try:
        plan = pickle.loads(memoryview(message)[10:])
        for step in plan.steps:
            if isinstance(step, AwaitCgroup):
                step.fd = gor
        if spare:
            plan.spare_fd = rest[0]
            stdio = (0, 1, 2)  # /dev/null until the run hands over its own
        else:
            stdio = (rest[0], rest[1], rest[2])
    except BaseException as exc:  # noqa: BLE001 - everything must reach the caller
        _report(errw, "starting the sandbox", exc)
        os._exit(125)
    _child(plan, stdio, errw, -1, gor, -1)  # never returns
