"""Owning sandboxes from start to reap: used in-process, or inside the spawn helper."""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import os

from . import spawn, state
from .spec import Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cgroups import Cgroup

# (wait status, user seconds, system seconds, cgroup stats as a dict or None)
Finished = tuple[int, float, float, "dict[str, float | int | None] | None"]


class Supervisor:
    """Starts sandboxes as its own children, reaps them and removes what they left on the host."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[Plan, int, Cgroup | None, int, list[int]]] = {}

    def start(self, plan: Plan, stdio: tuple[int, int, int]) -> tuple[int, int]:
        """(pid, pidfd) of the sandbox's first process; on failure nothing is left behind.

        The returned pidfd is the caller's to close (the helper sends its copy over a socket,
        so ownership is the same in both modes); the supervisor keeps one of its own.
        """
        lock = state.hold(plan.state_dir, plan.sandbox_id) if plan.cgroup_version else -1
        group = None
        layer_fds = state.hold_shared(plan.layer_locks)
        try:
            group = _create_cgroup(plan)
            spawn.prepare(plan)
            try:
                pid = spawn.launch(plan, stdio)
            except BaseException:
                spawn.cleanup(plan, failed=True)
                raise
        except BaseException:
            if group is not None:
                group.kill_all()
                group.remove()
            if lock >= 0:
                state.release(plan.state_dir, plan.sandbox_id, lock)
            state.close_all(layer_fds)
            raise
        pidfd = os.pidfd_open(pid)
        self._running[pid] = (plan, pidfd, group, lock, layer_fds)
        return pid, os.dup(pidfd)

    def finish(self, pid: int) -> Finished:
        """Block until the sandbox ended; read its accounting, then remove what it left."""
        plan, pidfd, group, lock, layer_fds = self._running.pop(pid)
        stats = None
        try:
            status, utime, stime = spawn.reap(pid)
            if group is not None:
                if plan.share_pid:
                    # Without a pid namespace of its own, the first process's exit does not
                    # end the others: the run is over, so they go (runc does the same).
                    group.kill_all()
                stats = group.stats().to_dict()
        finally:
            os.close(pidfd)
            try:
                if group is not None:
                    group.remove()
            finally:
                spawn.cleanup(plan, failed=False)
                if lock >= 0:
                    state.release(plan.state_dir, plan.sandbox_id, lock)
                state.close_all(layer_fds)
        return status, utime, stime, stats

    def kill_all(self) -> None:
        """End and reap every sandbox still running (the caller went away)."""
        for pid, (_, pidfd, *_rest) in list(self._running.items()):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.finish(pid)


def _create_cgroup(plan: Plan) -> Cgroup | None:
    if plan.cgroup_version is None:
        return None
    from . import cgroups

    backend = cgroups.backend()
    if backend is None or backend.version != plan.cgroup_version:  # type: ignore[attr-defined]
        from .errors import HostSupportError

        raise HostSupportError("the cgroup layout changed while isolate was running; see isolate doctor")
    group, writes = backend.create(  # type: ignore[attr-defined]
        plan.sandbox_id, plan.cgroup_parent, plan.limits, plan.share_pid
    )
    if plan.trace_fd >= 0:  # what was really done, to compare with --explain (tests do)
        from .explain import cgroup_lines

        os.write(plan.trace_fd, "".join(line + "\n" for line in cgroup_lines(plan, writes)).encode())
    return group  # type: ignore[no-any-return]
