"""Starting, reaping and cleaning up one sandbox: the supervisor's side and the child's side.

The parent clones the child straight into its new namespaces (see ``_libc.clone_fork``);
the child runs the plan's steps and execs the command.  A close-on-exec pipe carries a
setup failure back to the parent: end-of-file without data means the exec succeeded.
"""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import gc
import os
import select

from isolate import _libc
from isolate.plan.steps import AwaitCgroup, JoinCgroup, Plan, UnshareCgroupNamespace
from isolate.process import child

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Signals whose default action ends a process.  The kernel drops them for a pid
# namespace's init unless it has a handler (pid_namespaces(7)).
_TERMINATING = {
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGPIPE,
}
# What a terminal sends to the whole foreground process group rather than one process.
_TO_GROUP = {signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGWINCH}


def prepare(plan: Plan) -> None:
    """Host directories the child needs: the (empty) mount point of its tmpfs, --keep dirs."""
    os.makedirs(plan.stage_dir, 0o700, exist_ok=True)
    if plan.userns:
        # The namespace's root is an ordinary id outside: it must be able to walk to the
        # directory its tmpfs is mounted on (0711: nothing to list, only to pass through).
        for path in (os.path.dirname(plan.stage_dir), plan.stage_dir):
            os.chmod(path, 0o711)
    for path in plan.keep_dirs:
        os.makedirs(path, 0o755)


def cleanup(plan: Plan, failed: bool) -> None:
    """Remove what ``prepare`` made for this sandbox; a failed start keeps nothing, --keep or not."""
    if not plan.keep_dirs:
        return  # the common case: everything lived in the sandbox's own tmpfs
    import shutil

    if plan.work_dir_to_remove:
        shutil.rmtree(plan.work_dir_to_remove, ignore_errors=True)
    if failed:
        shutil.rmtree(os.path.dirname(plan.keep_dirs[0]), ignore_errors=True)


def launch(plan: Plan, stdio: tuple[int, int, int], meanwhile: Callable[[], None] | None = None) -> int:
    """Start the sandbox; return the pid of its first process once the command was exec'd.

    ``meanwhile`` runs in the parent once the child exists, while it builds its root; the
    child's AwaitCgroup step (or, in a user namespace, its first action) waits for it.
    Raises SetupError (or CommandNotFoundError / CommandNotExecutableError) after reaping
    the child when a step or the exec failed, or what ``meanwhile`` raised after killing it.
    """
    pid, errr = begin(plan, stdio, meanwhile)
    return await_exec(pid, errr)


def begin(plan: Plan, stdio: tuple[int, int, int], meanwhile: Callable[[], None] | None = None) -> tuple[int, int]:
    """Clone the child and let it build its root: (pid, read end of its error pipe)."""
    awaits = [step for step in plan.steps if isinstance(step, AwaitCgroup)]
    if plan.init:
        from isolate.process import init  # noqa: F401  (the child cannot import: it may be past pivot_root soon)
    errr, errw = os.pipe2(os.O_CLOEXEC)
    gor, gow = os.pipe2(os.O_CLOEXEC) if plan.userns or awaits or meanwhile else (-1, -1)
    for step in awaits:
        step.fd = gor
    try:
        pid = _libc.clone_fork(plan.clone_flags)
        if pid == 0:
            child_main(plan, stdio, errw, errr, gor, gow)  # never returns
        os.close(errw)
        errw = -1
        if gow >= 0:
            # The child waits on this pipe: in a user namespace for its uid/gid maps (and,
            # since the cgroup's files belong to the host's root, its cgroup) before it may
            # do anything; otherwise at its AwaitCgroup step, for its cgroup.
            os.close(gor)
            gor = -1
            try:
                if plan.userns:
                    _map_ids(pid, plan.userns)
                if meanwhile is not None:
                    meanwhile()
                for path in plan.parent_joins:
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, str(pid).encode())
                    finally:
                        os.close(fd)
            except BaseException:
                os.kill(pid, signal.SIGKILL)  # our child, not yet reaped: its pid is still its own
                os.waitpid(pid, 0)
                raise
            finally:
                os.close(gow)  # end-of-file: go (a child that sees no maps fails its first step)
                gow = -1
    except BaseException:
        os.close(errr)
        raise
    finally:
        for fd in (errw, gor, gow):
            if fd >= 0:
                os.close(fd)
    return pid, errr


def await_exec(pid: int, errr: int) -> int:
    """``pid`` once it exec'd its command (end-of-file on the close-on-exec pipe ``errr``)."""
    report = child.read_report(errr)
    if report:
        os.waitpid(pid, 0)
        raise child.decode_failure(report)
    return pid


def _receive_run(plan: Plan) -> None:
    """In a spare, ready to exec: wait for the run's command and stdio (supervisor.Spare.go)."""
    import socket  # already loaded by the parent (nothing can be imported after pivot_root)

    sock = socket.socket(fileno=plan.spare_fd)
    message, fds, _, _ = socket.recv_fds(sock, 1 << 21, 3)
    if len(fds) != 3:
        os._exit(125)  # the parent discarded us
    plan.argv = [os.fsdecode(a) for a in message.split(b"\0")]
    child.setup_stdio(fds)
    for fd in fds:
        os.close(fd)
    sock.close()


def _map_ids(pid: int, maps: list[tuple[int, int, int]]) -> None:
    """Write the child's uid and gid maps (user_namespaces(7)).

    Root writes them itself.  A user may map only its own id, and only after denying
    setgroups; a wider map goes through the setuid newuidmap/newgidmap, which check
    /etc/subuid and /etc/subgid.
    """
    if os.geteuid() == 0 or len(maps) == 1:
        gid_maps = maps if os.geteuid() == 0 else [(0, os.getegid(), 1)]
        child.write_id_maps(pid, maps, gid_maps, deny_setgroups=os.geteuid() != 0)
        return
    import subprocess

    for tool, own in (("newuidmap", os.geteuid()), ("newgidmap", os.getegid())):
        args = [str(pid)]
        for inside, outside, count in maps:
            args += [str(inside), str(own if inside == 0 else outside), str(count)]
        done = subprocess.run([tool, *args], capture_output=True, text=True)
        if done.returncode != 0:
            from isolate.errors import HostSupportError

            raise HostSupportError(f"{tool} failed: {done.stderr.strip()}; check /etc/subuid and /etc/subgid")


def reap(pid: int) -> tuple[int, float, float]:
    """Wait for the sandbox's first process: (wait status, user seconds, system seconds)."""
    return _libc.wait4(pid)


def deliver(pidfd: int, pid: int, sig: int, ns_init: bool) -> bool:
    """Relay ``sig`` into the sandbox; True if its first process was ended in the signal's stead.

    A pid namespace's init ignores every signal it has no handler for, even from the host.
    A user's Ctrl-C or SIGTERM should still end a command that would die of it outside a
    sandbox, so when the command neither catches nor ignores a terminating signal, isolate
    carries out the default action itself with SIGKILL.  Terminal signals (Ctrl-C, Ctrl-\\,
    hangup, resize) go to the sandbox's process group, as a terminal sends them: a shell
    waiting for its child then sees the child die first, exactly as outside.  The group id
    is the first process's pid, which cannot be reused while that process is unreaped.
    """
    if ns_init and sig in _TERMINATING:
        caught, ignored = _signal_masks(pid)
        bit = 1 << (sig - 1)
        if not (caught | ignored) & bit:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            return True
    if sig in _TO_GROUP:
        try:
            os.killpg(pid, sig)
            return False
        except ProcessLookupError:
            pass
    signal.pidfd_send_signal(pidfd, sig)
    return False


def _signal_masks(pid: int) -> tuple[int, int]:
    caught = ignored = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    caught = int(line.split()[1], 16)
                elif line.startswith("SigIgn:"):
                    ignored = int(line.split()[1], 16)
    except OSError:
        pass
    return caught, ignored


def child_main(plan: Plan, stdio: tuple[int, int, int], errw: int, errr: int, gor: int = -1, gow: int = -1) -> None:
    """Runs in the new namespaces (cloned by ``begin``, or by the zygote).  Never returns:
    the sandbox's own prelude (user namespace ids, PID 1, session, stdio, a spare's
    descriptors), then the setup every front end shares (``child.run``)."""
    what = "starting the sandbox"
    step = None
    try:
        if gow >= 0:
            os.close(gow)  # or the end-of-file the child waits for never comes
        if plan.userns:
            os.read(gor, 1)  # returns at end-of-file, once the parent wrote the id maps
            os.close(gor)  # (a plan with a user namespace has no AwaitCgroup step to use it)
            os.setresgid(0, 0, 0)  # become the namespace's root, which the maps just defined
            os.setresuid(0, 0, 0)
        # The child shares the parent's memory copy-on-write; a garbage collection would
        # write to every object it scans and copy those pages (megabytes for a long-lived
        # init).  Nothing here lives long enough to need one.
        gc.disable()
        if errr >= 0:
            os.close(errr)
        _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died before prctl took effect; then nobody reads the pipe.
        poller = select.poll()
        poller.register(errw, select.POLLOUT)
        if any(ev & select.POLLERR for _, ev in poller.poll(0)):
            os._exit(child.EXIT_SETUP_FAILED)
        first = 0
        if plan.init:
            # Join the cgroup (and its namespace) as PID 1, then leave the rest to a worker:
            # see init.py for why the long-lived init must touch as little as possible.
            joining = (AwaitCgroup, JoinCgroup, UnshareCgroupNamespace)
            fault = os.environ.get("ISOLATE_FAULT")  # tests: isolate.faults
            while first < len(plan.steps) and isinstance(plan.steps[first], joining):
                step = plan.steps[first]
                child.apply_step(step, plan.root, fault)
                if plan.trace_fd >= 0:
                    os.write(plan.trace_fd, (step.shell(plan.root) + "\n").encode())
                first += 1
            step = None
            from isolate.process.init import become_init  # loaded by begin(): here it is only looked up

            worker = os.fork()
            if worker != 0:
                become_init(worker, errw)
        os.setsid()
        child.setup_stdio(stdio)  # with a tty, stdin is a socket: see terminal.TerminalFromSandbox
        if plan.spare_fd >= 0:
            # A spare may wait long for its run: it keeps none of the caller's descriptors
            # (a pipe or socket the caller closes must reach its end-of-file meanwhile).
            low = 3
            for fd in sorted(fd for fd in (errw, gor, plan.spare_fd) if fd >= 3):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 0x7FFFFFFF)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        child.report(errw, child.describe(step, plan.root) if step is not None else what, exc)
        os._exit(child.EXIT_SETUP_FAILED)
    wait = ("waiting for the run", lambda: _receive_run(plan)) if plan.spare_fd >= 0 else None
    child.run(plan.steps[first:], plan.root, plan, errw, trace_fd=plan.trace_fd, before_exec=wait)
