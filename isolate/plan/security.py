"""The defences every sandbox gets unless asked otherwise (``--privileged`` keeps them off).

- **Capabilities** cut to docker's default set, without MKNOD: isolate has no device cgroup
  to stop a root process from reading a host disk through a node it made (docker keeps
  MKNOD and relies on its device cgroup).  Bounding, effective, permitted and inheritable
  sets all, and the ambient set cleared (capabilities(7)).  ``--cap-add`` / ``--cap-drop``.
- **no_new_privs**: execve can no longer grant privileges (setuid bits, file caps).
- **Execution confined to the root** (Landlock, Linux 5.13): execve of a file outside the
  sandbox's root fails, so the runtime's own binary, reached through /proc/self/exe, can never
  run in the sandbox and be opened for writing there (CVE-2019-5736).
- **Masked /proc paths** (a /dev/null or an empty read-only tmpfs over them) and
  **read-only /proc paths**, runc's lists (libcontainer/specconv).  /sys is read-only.
- **seccomp** (see seccomp.py): a default filter that refuses the syscalls a sandbox has
  no business making, with EPERM.
- **RLIMITs** (``--ulimit``) and **oom_score_adj** (``--oom-score-adj``).
"""

from __future__ import annotations

import os

from isolate import _libc
from isolate.errors import ConfigError
from isolate.plan.steps import Mount, Step, quote

CAPS = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]  # fmt: skip
CAP_NUMBER = {name: number for number, name in enumerate(CAPS)}
# docker's default set (moby's oci/caps/defaults.go) minus MKNOD, see above.
DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})  # fmt: skip

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

RLIMITS = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}  # fmt: skip


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPS) - 1


def resolve_caps(add: list[str], drop: list[str], privileged: bool) -> frozenset[str]:
    """The capability names a sandbox keeps; ALL is accepted in both lists, as docker does."""

    def names(items: list[str], flag: str) -> set[str]:
        out = set()
        for item in items:
            name = item.upper().removeprefix("CAP_")
            if name == "ALL":
                out |= set(CAPS)
            elif name in CAP_NUMBER:
                out.add(name)
            else:
                raise ConfigError(f"{flag} {item!r}: no such capability; see capabilities(7), e.g. NET_ADMIN")
        return out

    keep = set(CAPS) if privileged else set(DEFAULT_CAPS)
    keep |= names(add, "--cap-add")
    keep -= names(drop, "--cap-drop")
    return frozenset(keep)


class DropCapabilities(Step):
    """Keep only ``keep`` in every capability set; before switching user (it needs SETPCAP)."""

    __slots__ = ("keep", "last")
    what = "dropping capabilities"

    def __init__(self, keep: list[str], last: int) -> None:
        self.keep = keep
        self.last = last

    def apply(self, root: str) -> None:
        wanted = {CAP_NUMBER[n] for n in self.keep if CAP_NUMBER[n] <= self.last}
        for cap in range(self.last + 1):
            if cap not in wanted:
                _libc.prctl(_libc.PR_CAPBSET_DROP, cap)
        try:
            _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass  # kernels before 4.3 have no ambient set
        # capset can only keep what the process has: root may lack some (a container host
        # can withhold CAP_SYS_RESOURCE, as these machines do).  "ALL" means all it has.
        mask = sum(1 << cap for cap in wanted) & _libc.cap_permitted()
        _libc.capset(mask, mask, mask)

    def shell(self, root: str) -> str:
        caps = ",".join("cap_" + n.lower() for n in sorted(self.keep))
        dropped = ",".join("cap_" + n.lower() for n in CAPS if n not in self.keep)
        return f"capsh --drop={dropped or '-'} --caps='{caps or '-'}=eip' --"


class ExecOnlyBeneathRoot(Step):
    """Landlock: from here on, this process and its descendants may execve(2) only files
    beneath "/" (the sandbox's root: after pivot_root, chroot or the setns into its mount
    namespace).  What the kernel reaches outside it is refused with EACCES: the runtime's binary
    through ``#!/proc/self/exe`` (CVE-2019-5736), a host program through a leaked descriptor.
    Other accesses are not restricted.  Nothing happens on a kernel without Landlock."""

    __slots__ = ()
    what = "confining execution to the root (landlock)"

    def apply(self, root: str) -> None:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _libc.landlock_execute_beneath(fd)
        finally:
            os.close(fd)

    def shell(self, root: str) -> str:
        return "# landlock: execute only files beneath / from now on"


class SetRlimit(Step):
    __slots__ = ("resource", "soft", "hard", "number")
    what = "setrlimit"

    def __init__(self, resource: str, soft: int, hard: int) -> None:
        import resource as r

        self.resource = resource
        self.soft = soft
        self.hard = hard
        self.number = getattr(r, RLIMITS[resource])

    def apply(self, root: str) -> None:
        # Through ctypes, not the resource module: after pivot_root nothing can be imported,
        # and the process that clones (the spawn helper, the monitor) may never have loaded it.
        _libc.setrlimit(self.number, self.soft, self.hard)

    def shell(self, root: str) -> str:
        return f"prlimit --pid $$ --{self.resource}={self.soft}:{self.hard}"


class SetOomScoreAdj(Step):
    __slots__ = ("value",)
    what = "oom_score_adj"

    def __init__(self, value: int) -> None:
        self.value = value

    def apply(self, root: str) -> None:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(self.value).encode())
        finally:
            os.close(fd)

    def shell(self, root: str) -> str:
        return f"echo {self.value} > /proc/self/oom_score_adj"


def ulimit_steps(items: list[str]) -> list[Step]:
    """``--ulimit NAME=SOFT[:HARD]`` (docker's syntax; -1 or unlimited for no limit)."""
    steps: list[Step] = []
    if not items:
        return steps  # and no import of resource on every run
    import resource

    for item in items:
        name, _, value = item.partition("=")
        if name not in RLIMITS or not value:
            raise ConfigError(f"--ulimit {item!r}: expected NAME=SOFT[:HARD] with NAME one of {', '.join(RLIMITS)}")
        soft_text, _, hard_text = value.partition(":")
        try:
            soft = _limit(soft_text)
            hard = _limit(hard_text) if hard_text else soft
        except ValueError:
            raise ConfigError(f"--ulimit {item!r}: limits are numbers, -1 or unlimited") from None
        if soft > hard and hard != resource.RLIM_INFINITY:
            raise ConfigError(f"--ulimit {item!r}: the soft limit is above the hard one")
        steps.append(SetRlimit(name, soft, hard))
    return steps


def _limit(text: str) -> int:
    import resource

    return resource.RLIM_INFINITY if text in ("-1", "unlimited") else int(text)


def mask_steps(root: str) -> list[Step]:
    """runc's masked and read-only paths; absent ones are skipped at apply time."""
    steps: list[Step] = []
    for path in MASKED_PATHS:
        steps.append(MaskPath(path, f"{root}/dev/null"))
    for path in READONLY_PATHS:
        steps.append(Mount(f"{root}{path}", path, None, _libc.MS_BIND | _libc.MS_REC | _libc.MS_RDONLY, create=""))
    return steps


class MaskPath(Step):
    """Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory.

    ``null`` is the /dev/null to bind, as this step sees it; ``after_pivot``: the step runs
    once the new root is / (the OCI front end's ``linux.maskedPaths``).
    """

    __slots__ = ("path", "null", "after_pivot")
    what = "masking a path"

    def __init__(self, path: str, null: str = "/dev/null", after_pivot: bool = False) -> None:
        self.path = path
        self.null = null
        self.after_pivot = after_pivot

    def apply(self, root: str) -> None:
        from isolate.plan.steps import resolve_in_root

        try:
            target = resolve_in_root("/" if self.after_pivot else root, self.path)
        except FileNotFoundError:
            return  # this kernel has no such file: nothing to hide
        if os.path.isdir(target):
            _libc.mount("tmpfs", target, "tmpfs", _libc.MS_RDONLY | _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)
        else:
            _libc.mount(self.null, target, None, _libc.MS_BIND)

    def shell(self, root: str) -> str:
        target = quote(self.path if self.after_pivot else root + self.path)
        return f"[ -d {target} ] && mount -t tmpfs -o ro tmpfs {target} || mount --bind /dev/null {target}"
