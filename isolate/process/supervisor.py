"""Owning sandboxes from start to reap: used in-process, or inside the spawn helper."""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import os

from isolate import _state as state
from isolate import faults
from isolate.errors import SetupError
from isolate.plan.steps import AwaitCgroup, Plan
from isolate.process import spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from isolate.cgroups import Cgroup

# (wait status, user seconds, system seconds, cgroup stats as a dict or None)
Finished = tuple[int, float, float, "dict[str, float | int | None] | None"]


class Supervisor:
    """Starts sandboxes as its own children, reaps them and removes what they left on the host."""

    def __init__(self, zygote: bool = False) -> None:
        # zygote: clone sandboxes from the zygote (zygote.py), so that this process, which
        # may hold many sandboxes' state (the monitor), is never forked itself.
        self.zygote = zygote
        self._running: dict[int, tuple[Plan, int, Cgroup | None, int, list[int]]] = {}

    def start(
        self,
        plan: Plan,
        stdio: tuple[int, int, int],
        spare: Spare | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """(pid, pidfd) of the sandbox's first process; on failure nothing is left behind.

        The returned pidfd is the caller's to close (the helper sends its copy over a socket,
        so ownership is the same in both modes); the supervisor keeps one of its own.
        With ``spare`` (this plan, built ahead by :meth:`prestart`) only the exec is left;
        ``meanwhile`` runs while it execs.
        """
        if spare is not None:
            try:
                pid = spare.go(plan.argv, stdio, meanwhile)
            except BaseException:
                spare.discard()
                raise
            pidfd, spare.pidfd = spare.pidfd, -1
            self._running[pid] = (plan, pidfd, spare.group, spare.lock, [])
            return pid, os.dup(pidfd)
        lock = state.hold(plan.state_dir, plan.sandbox_id) if plan.cgroup_version else -1
        group = None
        made: list[Cgroup | None] = []
        layer_fds = state.hold_shared(plan.layer_locks)
        try:
            # The cgroup is made while the child mounts its root (AwaitCgroup), except when
            # tracing: then the trace lists the parent's work first, as --explain does.
            meanwhile = None
            if plan.trace_fd >= 0 or plan.userns or not plan.cgroup_version:
                group = _create_cgroup(plan)
            else:

                def meanwhile() -> None:
                    made.append(_create_cgroup(plan))

            spawn.prepare(plan)
            try:
                if self.zygote and meanwhile is not None:
                    pid = spawn.await_exec(*_begin_from_zygote(plan, list(stdio), False, meanwhile))
                else:
                    pid = spawn.launch(plan, stdio, meanwhile)
                if made:
                    group = made[0]
                faults.point("supervisor:spawned")
            except BaseException:
                spawn.cleanup(plan, failed=True)
                raise
        except OSError as exc:
            _undo_start(plan, group or (made[0] if made else None), lock, layer_fds)
            raise host_failure("starting the sandbox", exc) from exc
        except BaseException:
            _undo_start(plan, group or (made[0] if made else None), lock, layer_fds)
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
            try:
                faults.point("supervisor:finish")
                if group is not None:
                    if plan.share_pid:
                        # Without a pid namespace of its own, the first process's exit does not
                        # end the others: the run is over, so they go (runc does the same).
                        group.kill_all()
                    stats = group.stats().to_dict()
            except OSError as exc:
                raise host_failure("reading the sandbox's accounting", exc) from exc
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

    def prestart(self, plan: Plan) -> Spare:
        """Build ``plan``'s sandbox, cgroup included, up to its exec; :meth:`start` runs it.

        The zygote (zygote.py) clones it, as this process's child, while this process makes
        its cgroup; it waits at its AwaitCgroup step for that, then at its exec for the run.
        """
        import socket  # send_fds/recv_fds; loaded before the child needs it (see spawn._receive_run)

        if plan.userns or plan.init or plan.layer_locks or plan.keep_dirs or not plan.cgroup_version:
            raise ValueError("this plan cannot be built ahead")
        awaits = [step for step in plan.steps if isinstance(step, AwaitCgroup)]
        if len(awaits) != 1:
            raise ValueError("this plan has no AwaitCgroup step")
        lock = state.hold(plan.state_dir, plan.sandbox_id)
        made: list[Cgroup | None] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            spawn.prepare(plan)
            pid, errr = _begin_from_zygote(plan, [theirs.fileno()], True, lambda: made.append(_create_cgroup(plan)))
            group = made[0]
            try:
                pidfd = os.pidfd_open(pid)
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(errr)
                raise
        except BaseException:
            ours.close()
            if made and made[0] is not None:
                made[0].remove()
            state.release(plan.state_dir, plan.sandbox_id, lock)
            raise
        finally:
            theirs.close()
        return Spare(plan, pid, pidfd, errr, ours, group, lock)

    def kill(self, pid: int) -> None:
        """SIGKILL a sandbox's first process (through its pidfd: the pid cannot have been reused)."""
        try:
            signal.pidfd_send_signal(self._running[pid][1], signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        """End and reap every sandbox still running (the caller went away)."""
        for pid in list(self._running):
            self.kill(pid)
            self.finish(pid)


def _begin_from_zygote(plan: Plan, fds: list[int], spare: bool, meanwhile: Callable[[], None]) -> tuple[int, int]:
    """As spawn.begin, the clone done by the zygote (CLONE_PARENT: the child is still ours).

    ``fds`` go to the child after its error and cgroup pipes (zygote.Zygote.clone); returns its
    pid and the read end of its error pipe, once ``meanwhile`` let it past AwaitCgroup.
    """
    from isolate.process import zygote

    errr, errw = os.pipe2(os.O_CLOEXEC)
    gor, gow = os.pipe2(os.O_CLOEXEC)
    try:
        # The child waits at its AwaitCgroup step for ``meanwhile``, which runs while the
        # zygote clones it.
        pid = zygote.clone(plan, [errw, gor, *fds], spare, meanwhile)
    except BaseException:
        os.close(errr)
        raise
    finally:
        for fd in (errw, gor, gow):
            os.close(fd)  # gow: end-of-file, past AwaitCgroup
    return pid, errr


class Spare:
    """A sandbox built ahead of its run, waiting at its exec for the command and its stdio.

    A Sandbox run in a loop builds the next one while the current command runs, so that
    sequential runs overlap their setup.  It owns its cgroup and lock from the start; it
    dies with the process that made it (PR_SET_PDEATHSIG, through the zygote) or by :meth:`discard`, and
    ``isolate gc`` removes what a crashed caller left.
    """

    def __init__(
        self, plan: Plan, pid: int, pidfd: int, errr: int, sock: socket.socket, group: Cgroup | None, lock: int
    ) -> None:
        self.plan = plan
        self.pid = pid
        self.pidfd = pidfd  # to kill it safely even once someone else reaped it
        self.owner = os.getpid()  # a fork of the caller inherits this object, not the sandbox
        self.errr = errr
        self.sock = sock
        self.group = group
        self.lock = lock

    def alive(self) -> bool:
        """Still waiting: not killed, and no step failed (then it exited)."""
        if self.owner != os.getpid():
            return False
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else's wait()
            return False
        return not done

    def go(self, argv: list[str], stdio: tuple[int, int, int], meanwhile: Callable[[], None] | None = None) -> int:
        """Hand over the command and stdio; its pid once exec'd, as spawn.launch returns it."""
        import socket

        try:
            socket.send_fds(self.sock, [b"\0".join(os.fsencode(a) for a in argv)], list(stdio))
        except OSError:
            pass  # it is gone: its report, or its death, tells why
        finally:
            self.sock.close()
        if meanwhile is not None:
            meanwhile()
        errr, self.errr = self.errr, -1
        return spawn.await_exec(self.pid, errr)

    def discard(self) -> None:
        """End it and remove its cgroup and lock (also after a failed :meth:`go`)."""
        if self.owner != os.getpid():  # inherited by a fork of the caller: only our copies go
            self.pid = 0
            self.group = None
            for fd in (self.pidfd, self.errr, self.lock):
                if fd >= 0:
                    os.close(fd)
            self.pidfd = self.errr = self.lock = -1
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped already (by go or alive, or someone's wait())
                pass
            os.close(self.pidfd)
            self.pidfd = -1
        self.sock.close()
        if self.errr >= 0:
            os.close(self.errr)
            self.errr = -1
        if self.group is not None:
            self.group.remove()
            self.group = None
        if self.lock >= 0:
            state.release(self.plan.state_dir, self.plan.sandbox_id, self.lock)
            self.lock = -1


def _undo_start(plan: Plan, group: Cgroup | None, lock: int, layer_fds: list[int]) -> None:
    if group is not None:
        group.kill_all()
        group.remove()
    if lock >= 0:
        state.release(plan.state_dir, plan.sandbox_id, lock)
    state.close_all(layer_fds)


def host_failure(what: str, exc: OSError) -> SetupError:
    """A failure of the host's side of a sandbox's start or end, as one line naming the phase."""
    where = f" ({exc.filename})" if exc.filename else ""
    return SetupError(f"{what} failed: {exc.strerror or exc}{where}", step=what, errno=exc.errno or 0)


def _create_cgroup(plan: Plan) -> Cgroup | None:
    if plan.cgroup_version is None:
        return None
    from isolate import cgroups

    backend = cgroups.backend()
    if backend is None or backend.version != plan.cgroup_version:
        from isolate.errors import HostSupportError

        raise HostSupportError("the cgroup layout changed while isolate was running; see isolate doctor")
    try:
        faults.point("cgroup:create")
        group, writes = backend.create(plan.sandbox_id, plan.cgroup_parent, plan.limits, plan.share_pid)
    except OSError as exc:
        raise host_failure(f"creating the cgroup {plan.cgroup_parent}/{plan.sandbox_id}", exc) from exc
    if plan.trace_fd >= 0:  # what was really done, to compare with --explain (tests do)
        from isolate.plan.explain import cgroup_lines

        os.write(plan.trace_fd, "".join(line + "\n" for line in cgroup_lines(plan, writes)).encode())
    return group
