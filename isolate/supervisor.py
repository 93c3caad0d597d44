"""Owning sandboxes from start to reap: used in-process, or inside the spawn helper."""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import os

from . import spawn
from .spec import Plan


class Supervisor:
    """Starts sandboxes as its own children, reaps them and removes what they left on the host."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[Plan, int]] = {}

    def start(self, plan: Plan, stdio: tuple[int, int, int]) -> tuple[int, int]:
        """(pid, pidfd) of the sandbox's first process; on failure nothing is left behind.

        The returned pidfd is the caller's to close (the helper sends its copy over a socket,
        so ownership is the same in both modes); the supervisor keeps one of its own.
        """
        spawn.prepare(plan)
        try:
            pid = spawn.launch(plan, stdio)
        except BaseException:
            spawn.cleanup(plan, failed=True)
            raise
        pidfd = os.pidfd_open(pid)
        self._running[pid] = (plan, pidfd)
        return pid, os.dup(pidfd)

    def finish(self, pid: int) -> tuple[int, float, float]:
        """Block until the sandbox ended; (wait status, user s, system s).  Cleans up after it."""
        plan, pidfd = self._running.pop(pid)
        try:
            return spawn.reap(pid)
        finally:
            os.close(pidfd)
            spawn.cleanup(plan, failed=False)

    def kill_all(self) -> None:
        """End and reap every sandbox still running (the caller went away)."""
        for pid, (_, pidfd) in list(self._running.items()):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.finish(pid)
