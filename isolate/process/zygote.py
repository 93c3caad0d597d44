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

from isolate import _libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from isolate.plan.steps import Plan

NAME = b"isolate-zygote"  # its comm, as ps shows it
_MAX_PLAN = 1 << 22
_MAX_TEMPLATES = 8  # templates a zygote keeps (the oldest goes first)
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
        self.templates: set[int] = set()  # tokens of the templates sent to this zygote

    def clone(self, plan: Plan, fds: list[int], spare: bool, meanwhile: Callable[[], None] | None = None) -> int:
        """Clone ``plan``'s child; its pid.  ``fds``: its error pipe, its cgroup pipe, then its
        spare socket (``spare``: it waits at its exec for the run) or its stdin, stdout, stderr.

        ``meanwhile`` runs here while the zygote clones (the caller's cgroup work overlaps the
        clone's ~1 ms); when it raises, the child is killed and reaped and the error raised.
        """
        reply, failure = self._request(self._message(plan, spare, False), fds, meanwhile)
        if reply == b"miss" and failure is None:  # it no longer keeps that template: send it again
            reply, failure = self._request(self._message(plan, spare, True), fds, None)
        if not reply:
            raise BrokenPipeError(errno.EPIPE, "the zygote process is gone")
        kind, _, value = reply.partition(b" ")
        if kind != b"pid":
            if failure is not None:
                raise failure
            code = int(value) if kind == b"err" else errno.EPROTO
            raise OSError(code, f"clone: {os.strerror(code)}")
        if failure is not None:
            os.kill(int(value), signal.SIGKILL)  # our child (CLONE_PARENT), never reaped: its pid is its own
            os.waitpid(int(value), 0)
            raise failure
        return int(value)

    def _message(self, plan: Plan, spare: bool, resend: bool) -> bytes:
        """The request: a header the zygote reads (kind, clone flags, init), then the plan.

        A spare's plan made from a template (builder.next_plan) goes as the template's token
        and the run's identity; the template itself goes along the first time (or again,
        ``resend``, when the zygote dropped it).  The child makes its plan (see _start).
        """
        template = plan.template if spare else None
        kind = b"R" if not spare else b"S" if template is None else b"T"
        header = kind + plan.clone_flags.to_bytes(8, "little") + (b"1" if plan.init else b"0")
        if template is None:
            return header + pickle.dumps(plan, pickle.HIGHEST_PROTOCOL)
        whole = b""
        if resend or template.token not in self.templates:
            whole = pickle.dumps(template.plan, pickle.HIGHEST_PROTOCOL)
            if len(self.templates) >= 4 * _MAX_TEMPLATES:
                self.templates.clear()  # forget the old ones: at worst one is sent again
            self.templates.add(template.token)
        identity = pickle.dumps(plan.identity(), pickle.HIGHEST_PROTOCOL)
        return header + template.token.to_bytes(8, "little") + len(whole).to_bytes(4, "little") + whole + identity

    def _request(
        self, message: bytes, fds: list[int], meanwhile: Callable[[], None] | None
    ) -> tuple[bytes, BaseException | None]:
        """Send one request and read its reply; what ``meanwhile``, run in between, raised."""
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
        return reply, failure

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
        import threading  # once per process

        # The main thread lives as long as the process (see _from_keeper): fork from it directly.
        _zygote = Zygote() if threading.current_thread() is threading.main_thread() else _from_keeper()
        import atexit

        # Reap it at exit: an orphan's zombie waits for PID 1, which need not reap.
        atexit.register(_shutdown, _zygote)
    return _zygote


# (requests, replies, the slot between them, owner pid) of the thread the zygote is forked from
_keeper: tuple[Any, Any, list[Any], int] | None = None


def _from_keeper() -> Zygote:
    """A new Zygote, forked from a thread that lives as long as this process, for a caller that
    is not the main thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked a process exits, not its process
    (prctl(2)), and that thread is the parent of the zygote and, through CLONE_PARENT, of every
    spare it clones.  Forked from a caller's worker thread, all of them were killed when that
    thread ended, and a spare killed between its alive() check and its exec read as a command
    killed by SIGKILL: a run that never ran reported 137 (tests/kernel/test_kill9.py).
    """
    global _keeper
    if _keeper is None or _keeper[3] != os.getpid():  # none yet, or inherited by a fork
        requests, replies = _thread.allocate_lock(), _thread.allocate_lock()
        requests.acquire()
        replies.acquire()
        slot: list[Any] = []

        def serve() -> None:
            while True:
                requests.acquire()
                try:
                    slot.append((True, Zygote()))
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    slot.append((False, exc))
                replies.release()

        _thread.start_new_thread(serve, ())
        _keeper = (requests, replies, slot, os.getpid())
    requests, replies, slot, _ = _keeper
    requests.release()
    replies.acquire()
    ok, value = slot.pop()
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


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

    # loaded once here, not in every child: see _start
    from isolate.plan import steps  # noqa: F401
    from isolate.process import spawn  # noqa: F401

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
    templates: dict[bytes, Plan] = {}  # token: a template's plan (builder.Template), oldest first
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, _MAX_PLAN, 5)
        except OSError:
            return
        if not message:
            return  # the caller closed its end
        try:
            spare = message[:1] != b"R"
            flags = int.from_bytes(message[1:9], "little")
            errw, gor, *rest = fds
            template = None
            if message[:1] == b"T":
                # Unpickled here once, then only read by the children (see _start).
                token, size = message[10:18], int.from_bytes(message[18:22], "little")
                if size:
                    templates.pop(token, None)
                    templates[token] = pickle.loads(memoryview(message)[22 : 22 + size])
                    while len(templates) > _MAX_TEMPLATES:
                        del templates[next(iter(templates))]
                template = templates.get(token)
            if message[9:10] == b"1":
                from isolate.process import init  # noqa: F401  (loaded once here, not in every child)
            if message[:1] == b"T" and template is None:
                reply = b"miss"
            else:
                pid = _libc.clone_fork(flags | _libc.CLONE_PARENT, fork_hooks=False)
                if pid == 0:
                    # The zygote's end of its socket: a child that kept it (an init never execs, a
                    # spare waits) would hide the zygote's death from the caller, whose next
                    # request would then wait for that child to end.
                    os.close(fd)
                    _libc.prctl_set_name(b"isolate-spare" if spare else b"isolate-child")  # not the zygote's, in ps
                    _start(message, spare, errw, gor, rest, template)  # never returns
                reply = b"pid %d" % pid
        except OSError as exc:
            reply = b"err %d" % (exc.errno or errno.EIO)
        except Exception:  # noqa: BLE001 - a bad request must not end the zygote
            reply = b"err %d" % errno.EINVAL
        finally:
            for received in fds:
                os.close(received)
        sock.send(reply)


def _start(message: bytes, spare: bool, errw: int, gor: int, rest: list[int], template: Plan | None) -> None:
    """The cloned child: make its plan, then build the sandbox (spawn.child_main).

    A whole plan is unpickled here, not in the zygote: the objects it makes would be
    written into pages the zygote shares with the spares still alive, so each run the
    zygote would copy them (about 140 page faults), and the child again when it reads the
    plan.  A plan made from a template (kept by the zygote, unpickled once) costs the child
    only a copy of the few steps that differ (Plan.with_identity): about 0.5 ms less.
    """
    from isolate.plan.steps import AwaitCgroup
    from isolate.process import child
    from isolate.process.spawn import child_main

    try:
        if template is not None:
            size = int.from_bytes(message[18:22], "little")
            plan = template.with_identity(pickle.loads(memoryview(message)[22 + size :]))
        else:
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
        child.report(errw, "starting the sandbox", exc)
        os._exit(child.EXIT_SETUP_FAILED)
    child_main(plan, stdio, errw, -1, gor, -1)  # never returns
