"""The options of ``isolate run``, defined once for both parsers.

``isolate run`` is the hot path: importing click costs more than a whole sandbox start
(about 27 ms against 3 ms, ../shared/NOTES.md), so ``isolate.__main__`` parses a plain
``run`` command line with :func:`fast_parse` and leaves help, errors and every other
command to click, which builds its options from the same table.
"""

from __future__ import annotations

from isolate.cgroups.base import DEFAULT_PARENT


class Opt:
    __slots__ = ("names", "dest", "metavar", "help", "multiple", "flag", "choices")

    def __init__(
        self,
        names: tuple[str, ...],
        help: str,
        metavar: str = "",
        multiple: bool = False,
        flag: bool = False,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.names = names
        self.dest = names[0].lstrip("-").replace("-", "_")
        self.metavar = metavar
        self.help = help
        self.multiple = multiple
        self.flag = flag
        self.choices = choices


RUN_OPTIONS = [
    Opt(("--rootfs",), "Root filesystem directory (read-only lower layer). Default: the built-in host image.", "DIR"),
    Opt(
        ("--image",),
        "An image of the store as the root (see isolate image); its CMD runs when no command is given.",
        "NAME",
    ),
    Opt(("--root",), "The image store's directory (default /var/lib/isolate, or $ISOLATE_ROOT).", "DIR"),
    Opt(("--layer",), "Extra lower layer on top of --rootfs; repeat, later ones on top.", "DIR", multiple=True),
    Opt(("--volume", "-v"), "Bind-mount a host path: HOST:CTR[:ro]. Repeatable.", "HOST:CTR[:ro]", multiple=True),
    Opt(
        ("--tmpfs",),
        "Mount a fresh tmpfs at PATH (docker's options: size=, mode=, exec, ...).",
        "PATH[:OPTS]",
        multiple=True,
    ),
    Opt(("--read-only",), "No writable root: writes outside /tmp, /dev/shm and volumes fail (EROFS).", flag=True),
    Opt(("--hostname",), "Hostname inside the sandbox (default: the sandbox id).", "NAME"),
    Opt(("--env", "-e"), "Set K=V, or copy K from the host. Repeatable.", "K[=V]", multiple=True),
    Opt(("--workdir", "-w"), "Working directory inside the sandbox (created if missing).", "PATH"),
    Opt(("--user", "-u"), "Run as UID[:GID] (numeric).", "UID[:GID]"),
    Opt(
        ("--net",),
        "none: own network namespace with loopback only (default); host: the host's.",
        "MODE",
        choices=("none", "host"),
    ),
    Opt(("--share",), "Keep host namespaces: comma list of pid, net, uts, ipc.", "NS[,NS]", multiple=True),
    Opt(
        ("--mode",),
        "pivot_root (default) or chroot (escapable; for teaching).",
        "MODE",
        choices=("pivot_root", "chroot"),
    ),
    Opt(("--keep",), "Keep the upper layer after the run and print where it is.", flag=True),
    Opt(("--memory", "-m"), "Memory limit (K, M, G; binary units). Past it the OOM killer ends the sandbox.", "SIZE"),
    Opt(("--memory-swap",), "Memory plus swap limit (docker's meaning); equal to --memory: no swap.", "SIZE"),
    Opt(("--cpus",), "CPU bandwidth: 0.5 is half of one CPU (a CFS quota).", "N"),
    Opt(("--cpu-weight",), "Relative CPU share under contention, 1..10000 (default 100).", "N"),
    Opt(("--cpuset",), "CPUs the sandbox may run on, e.g. 0 or 0-1.", "LIST"),
    Opt(("--pids",), "The most processes and threads at once (stops fork bombs).", "N"),
    Opt(("--io-weight",), "Relative block I/O share, 1..10000 (cgroup v2).", "N"),
    Opt(("--time",), "CPU time limit of the whole sandbox (e.g. 2s); past it everything is killed: TO.", "TIME"),
    Opt(("--wall-time",), "Kill the sandbox after this much real time (e.g. 5, 2.5s, 500ms).", "TIME"),
    Opt(
        ("--cgroup-parent",),
        f"Parent cgroup of the sandbox, below each hierarchy's root (default {DEFAULT_PARENT}).",
        "PATH",
    ),
    Opt(("--no-cgroup",), "No cgroup at all: no limits, no accounting (and a little faster).", flag=True),
    Opt(("--detach", "-d"), "Run in the background; print the sandbox id (see isolate ps, logs, wait).", flag=True),
    Opt(("--name",), "A name for a detached sandbox (isolate exec NAME ..., stop NAME, ...).", "NAME"),
    Opt(("--init",), "PID 1 is isolate's init: it reaps orphans and relays signals (default with -d).", flag=True),
    Opt(("--no-init",), "With -d: the command itself is PID 1.", flag=True),
    Opt(("--interactive", "-i"), "Keep stdin open (the default for attached runs; for docker's -it habit).", flag=True),
    Opt(
        ("--tty", "-t"),
        "Give the command a pseudo-terminal (job control, window size): isolate run -it -- sh.",
        flag=True,
    ),
    Opt(
        ("--cap-add",),
        "Keep a capability beyond the default set (e.g. NET_ADMIN, or ALL). Repeatable.",
        "CAP",
        multiple=True,
    ),
    Opt(("--cap-drop",), "Drop a capability of the default set (or ALL). Repeatable.", "CAP", multiple=True),
    Opt(("--privileged",), "UNSAFE: all capabilities, no seccomp, no masked paths, no no_new_privs.", flag=True),
    Opt(("--seccomp",), "default, unconfined, or a docker/OCI seccomp profile (JSON).", "PROFILE"),
    Opt(
        ("--userns",),
        "A user namespace: root inside is an unprivileged id range outside (/etc/subuid).",
        flag=True,
    ),
    Opt(
        ("--ulimit",),
        "A resource limit NAME=SOFT[:HARD] (nofile, nproc, core, ...). Repeatable.",
        "LIMIT",
        multiple=True,
    ),
    Opt(("--oom-score-adj",), "The sandbox's OOM-killer bias, -1000..1000.", "N"),
    Opt(("--explain",), "Print every step (the plan the runtime executes) as shell commands, then run.", flag=True),
    Opt(("--dry-run",), "With or without --explain: print the plan and run nothing.", flag=True),
    Opt(("--json",), "Print the run result as JSON on stdout after the command's own output.", flag=True),
    Opt(("--result-file",), "Write the run result as JSON to this file.", "PATH"),
    Opt(("--meta",), "Write the run result as ioi/isolate's key:value meta file.", "PATH"),
]


def fast_parse(args: list[str]) -> tuple[dict[str, object], list[str]] | None:
    """(options, command) from ``isolate run``'s arguments, or None to let click handle them."""
    by_name = {name: opt for opt in RUN_OPTIONS for name in opt.names}
    values: dict[str, object] = {o.dest: ([] if o.multiple else (False if o.flag else None)) for o in RUN_OPTIONS}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return values, args[i + 1 :]
        if not arg.startswith("-") or arg == "-":
            return values, args[i:]
        name, eq, inline = arg.partition("=")
        opt = by_name.get(name)
        if opt is None:
            return None  # --help, a typo, a bundled short flag: click explains better
        if opt.flag:
            if eq:
                return None
            values[opt.dest] = True
            i += 1
            continue
        if eq:
            value = inline
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 1
        else:
            return None
        if opt.choices and value not in opt.choices:
            return None
        i += 1
        if opt.multiple:
            values[opt.dest].append(value)  # type: ignore[attr-defined]
        else:
            values[opt.dest] = value
    return values, []
