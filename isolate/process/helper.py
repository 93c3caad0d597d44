"""A small pre-started process that spawns sandboxes for a large caller.

clone() copies the caller's page tables, so its cost grows with the caller's memory (21-31
ms from a 256 MiB process against 3.4 ms from a small one, ../shared/NOTES.md).  A program
that holds a lot of memory hands its runs to a helper instead: a fresh interpreter started
with vfork+exec (constant cost), holding only isolate's own modules, driven over a
SOCK_SEQPACKET socket.  The caller passes the sandbox's stdio descriptors with SCM_RIGHTS
and receives a pidfd back, so it waits on and signals the sandbox directly.

When the caller dies its end of the socket closes; the helper then kills and reaps what it
still runs and exits, so nothing outlives the caller.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
from typing import Any

from isolate.errors import IsolateError
from isolate.plan.steps import Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.process.supervisor import Finished

_MAX_MSG = 1 << 20


class Helper:
    """The caller's end of one helper process.  One run at a time."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", f"from isolate.process.helper import serve; serve({theirs.fileno()})"],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def _call(self, request: Any, fds: list[int] | tuple[int, ...] = ()) -> tuple[Any, list[int]]:
        try:
            socket.send_fds(self.sock, [pickle.dumps(request)], list(fds))
            data, fds_back, _, _ = socket.recv_fds(self.sock, _MAX_MSG, 4)
        except OSError:  # killed between two requests: the socket is broken, not just at its end
            data, fds_back = b"", []
        if not data:
            raise IsolateError("the spawn helper process died; see its output above")
        reply = pickle.loads(data)
        if reply[0] == "error":
            raise reply[1]
        return reply, fds_back

    def start(self, plan: Plan, stdio: tuple[int, int, int]) -> tuple[int, int]:
        reply, fds = self._call(("start", plan), stdio)
        return reply[1], fds[0]

    def finish(self, pid: int) -> Finished:
        reply, _ = self._call(("finish", pid))
        return reply[1]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
        self.proc.wait()


class HelperPool:
    """Idle helpers for reuse; a busy one is never shared, so concurrent runs get their own."""

    def __init__(self) -> None:
        self._idle: list[Helper] = []
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def acquire(self) -> Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.proc.poll() is None:
                    return helper
                helper.sock.close()  # it died while idle (killed, OOM): a run must not get it
        return Helper()

    def release(self, helper: Helper, healthy: bool = True) -> None:
        if not healthy:
            helper.close()
            return
        with self._lock:
            self._idle.append(helper)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.close()

    def _forget(self) -> None:
        # A forked child must not talk to its parent's helpers.
        for helper in self._idle:
            helper.sock.close()
        self._idle = []
        self._lock = threading.Lock()


def serve(fd: int) -> None:
    """The helper's main loop."""
    from isolate.process.supervisor import Supervisor

    sock = socket.socket(fileno=fd)
    supervisor = Supervisor()
    try:
        while True:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 3)
            if not data:
                break
            request = pickle.loads(data)
            back: list[int] = []
            try:
                if request[0] == "start":
                    pid, pidfd = supervisor.start(request[1], tuple(fds))  # type: ignore[arg-type]
                    reply: Any = ("started", pid)
                    back = [pidfd]
                elif request[0] == "finish":
                    reply = ("finished", supervisor.finish(request[1]))
                else:
                    reply = ("error", IsolateError(f"spawn helper: unknown request {request[0]!r}"))
            except Exception as exc:  # noqa: BLE001 - sent back and raised in the caller
                reply = ("error", exc)
            finally:
                for f in fds:
                    os.close(f)
            socket.send_fds(sock, [pickle.dumps(reply)], back)
            for f in back:
                os.close(f)
    finally:
        supervisor.kill_all()


_pool_lock = threading.Lock()
_the_pool: HelperPool | None = None


def make_pool() -> HelperPool:
    """The process's one pool, made on first use (thread-safe: two threads may ask at once)."""
    global _the_pool
    with _pool_lock:
        if _the_pool is None:
            _the_pool = HelperPool()
        return _the_pool


def current_pool() -> HelperPool | None:
    """The process's pool if a run has needed one yet, else None."""
    return _the_pool
