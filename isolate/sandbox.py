"""The public facade: ``Sandbox(...).run([...]) -> RunResult``."""

from __future__ import annotations

import _signal as signal  # not "signal": it imports enum, slow at start-up
import os
import time

from isolate.config import DEFAULT_CGROUP_PARENT as DEFAULT_PARENT
from isolate.config import SandboxConfig, Tmpfs, Volume, parse_user
from isolate.errors import ConfigError, NotRootError
from isolate.limits import Limits
from isolate.plan.builder import build_plan, next_plan
from isolate.plan.steps import Template
from isolate.process import spawn
from isolate.result import RunResult, status_from_wait

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds to import
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import IO, Any, Protocol

    from isolate.plan.steps import Plan
    from isolate.process.supervisor import Finished

    class _Engine(Protocol):
        def start(self, plan: Plan, stdio: tuple[int, int, int]) -> tuple[int, int]: ...
        def finish(self, pid: int) -> Finished: ...


FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
# Above this resident size, clone() from the caller costs more than a round trip to the
# spawn helper (page tables are copied: ../shared/NOTES.md).
HELPER_THRESHOLD = 32 << 20
# How long a Sandbox makes its spares' plans from one template (Sandbox._next_plan).
TEMPLATE_SECONDS = 2.0


def new_id() -> str:
    return os.urandom(6).hex()


class Sandbox:
    """A reusable description of a sandbox; each :meth:`run` builds a fresh one and removes it.

    Args:
        rootfs: directory used as the read-only lower layer; ``None`` for the built-in host
            image (the host's /usr and /etc essentials, read-only, no download).
        layers: extra lower layers, later ones on top.
        volumes: ``"HOST:CTR[:ro]"`` strings or :class:`Volume` objects.
        tmpfs: paths (``"PATH[:OPTS]"``) that get a fresh tmpfs.
        read_only: no writable root (writes fail with EROFS); /tmp and volumes stay writable.
        hostname: defaults to the sandbox id.
        env: variables added to the defaults (PATH, HOME, HOSTNAME, TERM).
        workdir: absolute path inside the sandbox, created when missing (default: the image's, or /).
        user: ``uid``, ``(uid, gid)`` or ``"UID[:GID]"``.
        net: ``"none"`` (own network namespace with only loopback) or ``"host"``.
        share: host namespaces to keep, among pid, net, uts, ipc.
        mode: ``"pivot_root"`` (default) or ``"chroot"`` (escapable, for teaching).
        keep: keep the upper layer after the run; its path is ``RunResult.upper_dir``.
        state_dir: where isolate keeps its runtime state (default /run/isolate).
        limits: resource limits (:class:`~isolate.limits.Limits`): memory, cpus, pids, time...
        cgroups: ``None`` (default) accounts every run in a cgroup when the host has them;
            ``True`` requires one; ``False`` runs without (no limits, no accounting).
        cgroup_parent: the cgroup, below each hierarchy's root, that holds isolate's sandboxes.
        image: an image of the store (``NAME[:TAG]`` or id) as the root: its layers become the
            overlay's lower layers, and its config supplies env, entrypoint/cmd, workdir and user.
        image_root: the image store's root (default /var/lib/isolate, or $ISOLATE_ROOT).
        cap_add, cap_drop: capability names added to or removed from the default set
            (docker's, without MKNOD); "ALL" works in both.
        privileged: keep every capability, no seccomp filter, no masked /proc paths, no
            no_new_privs.  Unsafe: a root process inside can then reach the host.
        seccomp: "default", "unconfined", or the path of a docker / OCI seccomp profile.
        ulimits: ``"NAME=SOFT[:HARD]"`` resource limits (nofile, nproc, core, ...).
        oom_score_adj: the sandbox's OOM-killer bias (-1000..1000).
        userns: a user namespace: root inside is an unprivileged id outside (root's range in
            /etc/subuid, else 100000-165535), so files it creates on volumes belong to that id.
        spawn: ``"auto"``, ``"direct"`` (clone from this process) or ``"helper"`` (a small
            pre-started process clones, so the cost does not grow with this process's memory).
        prestart: from the second :meth:`run` on, build the next run's sandbox (namespaces,
            root, cgroup) while the command runs, so that runs in a loop overlap their setup;
            it waits as a child of this process until the next run, :meth:`close` or the
            Sandbox's collection.  Only for runs cloned from this process (``spawn``), with
            a cgroup, and without volumes, images, ``keep``, ``init`` or ``userns``.
    """

    def __init__(
        self,
        rootfs: str | os.PathLike[str] | None = None,
        *,
        layers: Sequence[str | os.PathLike[str]] = (),
        volumes: Iterable[str | Volume] = (),
        tmpfs: Iterable[str | Tmpfs] = (),
        read_only: bool = False,
        hostname: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: int | tuple[int, int] | str | None = None,
        net: str = "none",
        share: Iterable[str] = (),
        mode: str = "pivot_root",
        keep: bool = False,
        state_dir: str | None = None,
        limits: Limits | None = None,
        cgroups: bool | None = None,
        cgroup_parent: str = DEFAULT_PARENT,
        image: str | None = None,
        image_root: str | None = None,
        cap_add: Iterable[str] = (),
        cap_drop: Iterable[str] = (),
        privileged: bool = False,
        seccomp: str = "default",
        ulimits: Iterable[str] = (),
        oom_score_adj: int | None = None,
        userns: bool = False,
        spawn: str = "auto",
        prestart: bool = True,
    ) -> None:
        if isinstance(user, str):
            user = parse_user(user)
        elif isinstance(user, int):
            user = (user, user)
        self.config = SandboxConfig(
            rootfs=os.fspath(rootfs) if rootfs is not None else None,
            layers=[os.fspath(p) for p in layers],
            volumes=[v if isinstance(v, Volume) else Volume.parse(v) for v in volumes],
            tmpfs=[t if isinstance(t, Tmpfs) else Tmpfs.parse(t) for t in tmpfs],
            read_only=read_only,
            hostname=hostname,
            env=dict(env or {}),
            workdir=workdir,
            user=user,
            net=net,
            share=frozenset(share),
            mode=mode,
            keep=keep,
            limits=limits,
            cgroups=cgroups,
            cgroup_parent=cgroup_parent,
            image=image,
            image_root=image_root,
            cap_add=list(cap_add),
            cap_drop=list(cap_drop),
            privileged=privileged,
            seccomp=seccomp,
            ulimits=list(ulimits),
            oom_score_adj=oom_score_adj,
            userns=userns,
        )
        if state_dir is not None:
            self.config.state_dir = state_dir
        if spawn not in ("auto", "direct", "helper"):
            raise ConfigError(f"spawn={spawn!r}: choose auto, direct or helper")
        self.spawn = spawn
        self.config.validate()
        self._runs = 0
        self._spares: list[Any] = []  # supervisor.Spare: the next run, built ahead (one, unless threads race)
        self._spare_config = ""
        self._template: Template | None = None  # what the next spares' plans are made from
        self._no_spare = not prestart
        self._finalizer_set = False

    def close(self) -> None:
        """End the sandbox kept built for the next run, if any (a collected Sandbox does it too)."""
        _discard(self._spares)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(self, argv: Sequence[str], sandbox_id: str | None = None) -> Plan:
        """The steps a run of ``argv`` would take, without running anything."""
        config = self.config.copy()
        if os.geteuid() != 0:
            rootless(config)
        return build_plan(config, sandbox_id or new_id(), list(argv))

    def run(
        self,
        argv: Sequence[str],
        *,
        capture: bool = False,
        input: bytes | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        timeout: float | None = None,
        forward_signals: bool = False,
        tty: bool = False,
    ) -> RunResult:
        """Run ``argv`` in a fresh sandbox and wait for it.

        ``capture`` collects stdout and stderr into the result; ``input`` is fed to stdin;
        otherwise the given descriptors (default: this process's) are passed through.
        ``timeout`` (wall seconds) kills every process of the sandbox when it runs out, as
        ``Limits.wall_time`` does (the shorter wins); ``Limits.time`` does the same for the
        CPU time of the whole sandbox.
        ``forward_signals`` relays SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 and SIGWINCH
        to the command (main thread only; the CLI turns it on).  ``tty`` gives the command a
        pseudo-terminal relayed to this process's stdin and stdout (``isolate run -it``).

        Raises :class:`~isolate.errors.IsolateError` subclasses when the sandbox could not
        be built or the command not executed; nothing is left behind then.
        """
        if not argv and self.config.image is None:
            raise ConfigError("no command given: pass the command to run after --")
        spare = self._take_spare(tty)
        if spare is not None:
            plan = spare.plan
            plan.argv = list(argv)
        else:
            plan = self.plan(argv)
        self._runs += 1
        # From the second run on, a Sandbox run in a loop builds the next root while the
        # command runs (supervisor.Spare): sequential runs overlap their setup.
        refill = self._runs >= 2 and not self._no_spare and not tty and self._spare_possible()
        return self._run_plan(plan, capture, input, stdin, stdout, stderr, timeout, forward_signals, tty,
                              spare, (lambda: self._prestart(argv)) if refill else None)  # fmt: skip

    def _spare_possible(self) -> bool:
        c = self.config
        if c.volumes or c.keep or c.image is not None or c.init or c.userns or os.geteuid() != 0:
            return False  # volumes and images are resolved per run; the others wait elsewhere
        return self.spawn == "direct" or (self.spawn == "auto" and _rss() <= HELPER_THRESHOLD)

    def _take_spare(self, tty: bool) -> Any:
        try:
            spare = self._spares.pop()  # atomic: two threads never get the same one
        except IndexError:
            return None
        if tty or self._spare_config != repr(self.config.__dict__) or not spare.alive():
            spare.discard()  # built for another configuration, or gone
            return None
        return spare

    def _prestart(self, argv: Sequence[str]) -> None:
        """Build the next run's sandbox, up to its exec, while this run's command runs."""
        if self._spares:
            return
        from isolate.errors import IsolateError
        from isolate.process.supervisor import Supervisor

        key = repr(self.config.__dict__)
        try:
            spare = Supervisor().prestart(self._next_plan(argv, key))
        except ValueError:  # without a cgroup of its own, or joined by the parent: never
            self._no_spare = True
            return
        except (OSError, IsolateError):
            return  # the next run starts as this one did, and says what fails
        if not self._finalizer_set:
            import weakref

            weakref.finalize(self, _discard, self._spares)
            self._finalizer_set = True
        self._spare_config = key
        self._spares.append(spare)

    def _next_plan(self, argv: Sequence[str], key: str) -> Plan:
        """The next spare's plan, made from the last one's (plan.steps.Template) while the
        configuration is the same.  Files the plan was made from (the host image's /etc,
        a seccomp profile) are read again once the template is TEMPLATE_SECONDS old."""
        template = self._template
        now = time.monotonic()
        if template is None or template.key != key or now - template.made > TEMPLATE_SECONDS:
            template = self._template = Template(self.plan(argv), key, now)
        return next_plan(template, self.config, new_id())

    def run_plan(
        self,
        plan: Plan,
        *,
        capture: bool = False,
        input: bytes | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        timeout: float | None = None,
        forward_signals: bool = False,
        tty: bool = False,
    ) -> RunResult:
        """Run a plan made by :meth:`plan` (what ``--explain`` printed is what runs)."""
        return self._run_plan(plan, capture, input, stdin, stdout, stderr, timeout, forward_signals, tty, None, None)

    def _run_plan(
        self,
        plan: Plan,
        capture: bool,
        input: bytes | None,
        stdin: int | IO[Any] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
        timeout: float | None,
        forward_signals: bool,
        tty: bool,
        spare: Any,
        refill: Callable[[], None] | None,
    ) -> RunResult:
        wall = self.config.limits.wall_time
        if wall is not None and (timeout is None or wall < timeout):
            timeout = wall
        plan.tty = tty
        if spare is not None:
            from isolate.process.supervisor import Supervisor

            engine: tuple[_Engine, Any] = (Supervisor(), None)
        else:
            engine = self._engine()
        return _Run(plan, engine, spare, refill).run(capture, input, stdin, stdout, stderr, timeout, forward_signals)

    def _engine(self) -> tuple[_Engine, Any]:
        use_helper = self.spawn == "helper" or (self.spawn == "auto" and _rss() > HELPER_THRESHOLD)
        if not use_helper:
            from isolate.process.supervisor import Supervisor

            return Supervisor(), None
        from isolate.process.helper import make_pool

        helper = make_pool().acquire()
        return helper, helper


def rootless(config: SandboxConfig) -> None:
    """Run as an ordinary user: always in a user namespace, and without cgroups unless limits ask.

    A user can create user namespaces and, in one, every other kind (user_namespaces(7));
    it cannot create cgroups outside a subtree delegated to it, which v1 never offers.
    """
    from isolate.errors import HostSupportError

    if config.userns is False and os.environ.get("ISOLATE_ROOTLESS") == "0":
        raise NotRootError("must run as root (sudo isolate ...), or rootless (unset ISOLATE_ROOTLESS)")
    config.userns = True
    parent = delegated_cgroup_parent()
    if parent is not None and config.cgroups is not False:
        config.cgroup_parent = parent
        return _check_user(config)
    if config.limits.any_cgroup_limit or config.limits.time is not None:
        raise HostSupportError(
            "rootless runs have no cgroup here, so limits cannot be enforced: run as root, or from a "
            "cgroup v2 subtree delegated to your user (systemd: Delegate=yes), whose parent you own"
        )
    config.cgroups = False
    _check_user(config)


def _check_user(config: SandboxConfig) -> None:
    if config.mode == "pivot_root" and config.user not in (None, (0, 0)):
        from isolate.plan import builder

        if len(builder.id_maps()) == 1:
            raise ConfigError("--user: rootless with one id maps only root; add a range to /etc/subuid (newuidmap)")


def delegated_cgroup_parent() -> str | None:
    """For a user: ``<parent of its own cgroup>/isolate`` when that parent is delegated to it.

    cgroup v2 lets a user move a process between two cgroups when it may write the
    cgroup.procs of their common ancestor (cgroup-v2.rst, "Delegation Containment"): with
    the caller's own cgroup and the sandboxes both below a parent the user owns, isolate
    can create, limit and fill sandbox cgroups there.  systemd's Delegate=yes sets this up.
    """
    from isolate import cgroups

    lay = cgroups.layout()
    if lay.kind != "v2" or not {"memory", "cpu", "pids"} <= lay.v2_controllers:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            own = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    parent = os.path.dirname(own.rstrip("/"))
    if parent in ("", "/"):
        return None  # the root cgroup is never delegated
    path = os.path.join(lay.v2_mount, parent.lstrip("/"))
    try:
        if os.stat(path).st_uid != os.geteuid() or not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            return None
    except OSError:
        return None
    return os.path.join(parent.lstrip("/"), DEFAULT_PARENT)


def build_result(
    plan: Plan,
    status: int,
    utime: float,
    stime: float,
    stats: dict[str, Any] | None,
    wall: float,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
    timeout_reason: str | None = None,
    emulated: int | None = None,
    peak_seen: int | None = None,
) -> RunResult:
    """The RunResult of a finished sandbox, from its wait status and its cgroup's counters."""
    state, code, sig = status_from_wait(status, timeout_reason is not None)
    if sig == signal.SIGKILL and emulated:
        sig, code = emulated, 128 + emulated
    result = RunResult(
        status=state,
        exit_code=code,
        signal=sig,
        wall_time=wall,
        user_time=utime,
        system_time=stime,
        sandbox_id=plan.sandbox_id,
        upper_dir=plan.upper_dir,
        stdout=stdout,
        stderr=stderr,
    )
    if stats is not None:
        if stats.get("memory_peak") is None and peak_seen is not None:
            stats["memory_peak"] = peak_seen
        result.add_cgroup_stats(plan.cgroup_version or "", stats, plan.limits)
    if timeout_reason:
        result.limits_hit.append(timeout_reason)
    return result


def _discard(spares: list[Any]) -> None:
    while spares:
        spares.pop().discard()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


def _fileno(value: int | IO[Any] | None, default: int) -> int:
    if value is None:
        return default
    return value if isinstance(value, int) else value.fileno()


class _Run:
    """One run: stdio plumbing, waiting, timeout, signal forwarding and the result."""

    def __init__(self, plan: Plan, engine: tuple[_Engine, Any], spare: Any = None,
                 refill: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.engine, self.helper = engine
        self.spare = spare  # supervisor.Spare: this plan, built ahead
        self.refill = refill  # builds the next run's spare once this one's command started
        self.pidfd = -1
        self.pid = 0
        self.emulated: int | None = None
        self.timeout_reason: str | None = None  # "wall-time" or "cpu-time"
        self.peak_seen: int | None = None  # memory.current polled, where memory.peak is missing
        self.group: Any = None  # a read-only handle on the sandbox's cgroup, for --time
        self.held: list[int] = []  # signals that came before the sandbox's pid was known (see _forward)

    def run(
        self,
        capture: bool,
        input: bytes | None,
        stdin: int | IO[Any] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
        timeout: float | None,
        forward_signals: bool,
    ) -> RunResult:
        child_fds: list[int] = []  # our copies of the child's ends, closed once it started
        parent_fds: dict[int, str] = {}
        healthy = True
        # Relayed from before the start, not from the wait: a signal that comes while the
        # sandbox starts (on a slow host, long after its command is running) would otherwise
        # meet the default action and end isolate itself, sandbox and cgroup left to gc.  On
        # a terminal, ^C and resizes reach the command through the pty instead.
        old_handlers = self._forward(forward_signals, skip=(signal.SIGWINCH, signal.SIGINT) if self.plan.tty else ())
        try:
            stdio = []
            for n, (value, want_pipe) in enumerate(((stdin, input is not None), (stdout, capture), (stderr, capture))):
                if want_pipe:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours, theirs = (w, r) if n == 0 else (r, w)
                    parent_fds[ours] = ("stdin", "stdout", "stderr")[n]
                    child_fds.append(theirs)
                    stdio.append(theirs)
                else:
                    fd = _fileno(value, n)
                    try:
                        os.fstat(fd)
                    except OSError:  # a closed std descriptor: give the command /dev/null
                        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                        child_fds.append(fd)
                    stdio.append(fd)
            primary = -1
            sock = None
            if self.plan.tty:
                import socket

                from isolate.process.terminal import with_terminal_step

                sock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                child_fds.append(child_end.detach())
                stdio = [child_fds[-1]] * 3
                self.plan.steps = with_terminal_step(self.plan.steps, self.plan.user[0] if self.plan.user else 0)
            started = time.monotonic()
            try:
                if self.spare is not None:  # the next spare is built while this one execs
                    refill, self.refill = self.refill, None
                    self.pid, self.pidfd = self.engine.start(  # type: ignore[call-arg]
                        self.plan, (stdio[0], stdio[1], stdio[2]), self.spare, refill
                    )
                else:
                    self.pid, self.pidfd = self.engine.start(self.plan, (stdio[0], stdio[1], stdio[2]))
                while self.held:  # what came during the start, now that there is a pid to send it to
                    self._relay(self.held.pop(0))
                if sock is not None:
                    from isolate.process.terminal import receive_primary

                    primary = receive_primary(sock)
            finally:
                if sock is not None:
                    sock.close()
            for fd in child_fds:
                os.close(fd)
            child_fds = []
            finished = False
            try:
                if self.refill is not None:
                    self.refill()
                if primary >= 0:
                    from isolate.process.terminal import interact

                    parent_fds[primary] = "tty"
                    interact(primary, self.pidfd)
                    out = self._wait({}, None, timeout)
                else:
                    out = self._wait(parent_fds, input, timeout)
                finished = True
            finally:
                if not finished:  # interrupted: do not leave the sandbox running
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                try:
                    status, utime, stime, stats = self.engine.finish(self.pid)
                except BaseException:
                    healthy = False
                    raise
                wall = time.monotonic() - started
        except BaseException:
            healthy = False
            raise
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.pidfd >= 0:
                os.close(self.pidfd)
            for fd in child_fds + list(parent_fds):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.helper is not None:
                from isolate.process.helper import make_pool

                make_pool().release(self.helper, healthy)
        return build_result(
            self.plan, status, utime, stime, stats, wall,
            stdout=out.get("stdout") if capture else None,
            stderr=out.get("stderr") if capture else None,
            timeout_reason=self.timeout_reason, emulated=self.emulated, peak_seen=self.peak_seen,
        )  # fmt: skip

    def _wait(self, pipes: dict[int, str], input: bytes | None, timeout: float | None) -> dict[str, bytes]:
        """Pump the pipes until the command exited and its output is drained; enforce time limits."""
        import select  # a C module; selectors would cost ~1 ms of import on every CLI run

        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        pending = memoryview(input or b"")
        deadline = None if timeout is None else time.monotonic() + timeout
        cpu_limit = self.plan.limits.time if self.plan.cgroup_version else None
        poll_peak = False
        if self.plan.cgroup_version:
            from isolate.cgroups import open_cgroup

            self.group = open_cgroup(self.plan.cgroup_version, self.plan.cgroup_dirs)
            poll_peak = self.plan.cgroup_version == "v2" and not os.path.exists(
                os.path.join(self.plan.cgroup_dirs["unified"], "memory.peak")
            )
        # Below, CPU time and (before Linux 5.19) memory are sampled at this interval.
        interval = 0.02 if cpu_limit is not None or poll_peak else None
        poller = select.poll()
        watched = {self.pidfd: "exit"}
        poller.register(self.pidfd, select.POLLIN)
        for fd, name in list(pipes.items()):
            if name == "stdin" and not pending:
                os.close(fd)
                del pipes[fd]
                continue
            if name == "stdin":
                os.set_blocking(fd, False)
            poller.register(fd, select.POLLOUT if name == "stdin" else select.POLLIN)
            watched[fd] = name
        alive = True
        while watched:
            wait = None
            if alive and deadline is not None:
                wait = max(0.0, deadline - time.monotonic()) * 1000
            if alive and interval is not None:
                wait = min(wait, interval * 1000) if wait is not None else interval * 1000
            events = poller.poll(wait)
            if alive and not self.timeout_reason:
                if deadline is not None and time.monotonic() >= deadline:
                    self._kill("wall-time")
                elif cpu_limit is not None and self.group.cpu_usage() >= cpu_limit:
                    self._kill("cpu-time")
                if self.timeout_reason:
                    deadline = interval = None
                if poll_peak:
                    current = self.group.memory_current() or 0
                    self.peak_seen = max(self.peak_seen or 0, current)
            for fd, _ in events:
                name = watched[fd]
                if name == "exit":
                    alive = False
                elif name == "stdin":
                    try:
                        pending = pending[os.write(fd, pending[:65536]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if pending:
                        continue
                    os.close(fd)
                    del pipes[fd]
                else:
                    data = os.read(fd, 65536)
                    if data:
                        chunks[name].append(data)
                        continue
                poller.unregister(fd)
                del watched[fd]
        return {k: b"".join(v) for k, v in chunks.items()}

    def _kill(self, reason: str) -> None:
        """A time limit ran out: end every process of the sandbox."""
        self.timeout_reason = reason
        # SIGKILL to a pid namespace's init kills everything in it (pid_namespaces(7)); a
        # sandbox sharing the host's pid namespace is ended through its cgroup.
        signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.plan.share_pid and self.group is not None:
            self.group.kill_all()

    def _forward(self, enabled: bool, skip: tuple[int, ...] = ()) -> dict[int, Any]:
        if not enabled:
            return {}

        def relay(sig: int, _frame: Any) -> None:
            if self.pidfd < 0:  # still starting: sent once engine.start returned (see run)
                self.held.append(sig)
            else:
                self._relay(sig)

        installed: dict[int, Any] = {}
        try:
            for sig in FORWARDED_SIGNALS:
                if sig not in skip:
                    installed[sig] = signal.signal(sig, relay)
        except ValueError:  # not the main thread: only it may handle signals (signal(2) in Python)
            for installed_sig, handler in installed.items():
                signal.signal(installed_sig, handler)
            return {}
        return installed

    def _relay(self, sig: int) -> None:
        try:
            if spawn.deliver(self.pidfd, self.pid, sig, self.plan.new_pid_ns):
                self.emulated = sig
        except ProcessLookupError:
            pass
