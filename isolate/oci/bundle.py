"""From a bundle's config.json (runtime-spec 1.x) to the ordered steps that build the container.

The order is runc's (libcontainer/rootfs_linux.go): join the cgroup, propagation, the root
bound onto itself, the config's mounts in their order, devices, the hooks' sync point,
hostname, pivot_root, masked and read-only paths, sysctls, the console, the working
directory, rlimits, the command's lookup, then -- after ``start`` -- no_new_privs, user
and capabilities, seccomp and exec.  Steps from isolate's own planner are reused where the
meaning is the same (cgroup join, hostname, read-only root, seccomp).
"""

from __future__ import annotations

import json
import os

from isolate import _libc as L
from isolate.errors import ConfigError
from isolate.oci import steps as S
from isolate.oci.warnings import warn
from isolate.plan.seccomp import LoadSeccomp
from isolate.plan.security import ExecOnlyBeneathRoot, MaskPath, SetOomScoreAdj, last_cap
from isolate.plan.steps import (
    Chdir,
    JoinCgroup,
    MakeDevice,
    NoNewPrivs,
    RemountReadOnly,
    RemountRootReadOnly,
    SetHostname,
    Step,
)
from isolate.plan.steps import UnshareCgroupNamespace as UnshareCgroupNs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# runc's mount option table (libcontainer/specconv): flag to set, flag to clear.
FLAGS: dict[str, tuple[int, int]] = {
    "ro": (L.MS_RDONLY, 0), "rw": (0, L.MS_RDONLY),
    "nosuid": (L.MS_NOSUID, 0), "suid": (0, L.MS_NOSUID),
    "nodev": (L.MS_NODEV, 0), "dev": (0, L.MS_NODEV),
    "noexec": (L.MS_NOEXEC, 0), "exec": (0, L.MS_NOEXEC),
    "sync": (16, 0), "async": (0, 16), "dirsync": (128, 0),
    "mand": (64, 0), "nomand": (0, 64),
    "noatime": (L.MS_NOATIME, 0), "atime": (0, L.MS_NOATIME),
    "nodiratime": (2048, 0), "diratime": (0, 2048),
    "relatime": (1 << 21, 0), "norelatime": (0, 1 << 21),
    "strictatime": (L.MS_STRICTATIME, 0), "nostrictatime": (0, L.MS_STRICTATIME),
    "nosymfollow": (256, 0), "symfollow": (0, 256),
    "bind": (L.MS_BIND, 0), "rbind": (L.MS_BIND | L.MS_REC, 0),
    "remount": (L.MS_REMOUNT, 0), "defaults": (0, 0),
}  # fmt: skip
PROPAGATION = {
    "private": L.MS_PRIVATE, "shared": L.MS_SHARED, "slave": L.MS_SLAVE, "unbindable": 1 << 17,
    "rprivate": L.MS_PRIVATE | L.MS_REC, "rshared": L.MS_SHARED | L.MS_REC, "rslave": L.MS_SLAVE | L.MS_REC,
    "runbindable": (1 << 17) | L.MS_REC,
}  # fmt: skip
# Options engines pass that mean nothing to the kernel here (SELinux relabel, podman's copy-up).
IGNORED_OPTIONS = {"z", "Z", "tmpcopyup", "notmpcopyup", "copy", "nocopy", "U", "O"}
# Recursive mount attributes (mount_setattr(2)): applied to the top mount only.
RECURSIVE = {"rro": "ro", "rrw": "rw", "rnosuid": "nosuid", "rsuid": "suid", "rnodev": "nodev", "rdev": "dev",
             "rnoexec": "noexec", "rexec": "exec", "rnoatime": "noatime", "ratime": "atime",
             "rnodiratime": "nodiratime", "rdiratime": "diratime", "rrelatime": "relatime",
             "rnorelatime": "norelatime", "rstrictatime": "strictatime", "rnostrictatime": "nostrictatime"}  # fmt: skip
DEFAULT_DEVICES = [("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7), ("/dev/random", 1, 8),
                   ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0)]  # fmt: skip
DEV_LINKS = [("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"), ("/proc/self/fd/1", "/dev/stdout"),
             ("/proc/self/fd/2", "/dev/stderr")]  # fmt: skip
RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}  # fmt: skip
# Namespaced sysctls (runc's validator): anything else would change the host, and is refused.
SYSCTL_IPC = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
              "kernel.shmmni", "kernel.shm_rmid_forced"}  # fmt: skip
U64_MAX = (1 << 64) - 1

# The types of the runtime-spec fields isolate-oci reads (config.md, config-linux.md), checked
# once when config.json is loaded, so that no later step meets a string where a number goes: a
# dict is an object (its "*" entry types every value, its "!" entry names the fields it must
# have), [T] a list of T, ("int", LO, HI) an integer in that range.  Unknown fields pass (the
# spec lets configs carry more); a null is dropped, as Go's decoder leaves a field it sets to
# null at its zero value.
_U32 = ("int", 0, (1 << 32) - 1)
_I64 = ("int", -(1 << 63), (1 << 63) - 1)
_U64 = ("int", 0, U64_MAX)
_LIMIT = ("int", -(1 << 63), U64_MAX)  # rlimits: negative is taken for unlimited
_DEVICE_RULE = {"allow": bool, "type": str, "major": _I64, "minor": _I64, "access": str}
_RATE = [{"major": _I64, "minor": _I64, "rate": _U64, "!": ("major", "minor", "rate")}]
_ID_MAP = [{"containerID": _U32, "hostID": _U32, "size": _U32, "!": ("containerID", "hostID", "size")}]
_HOOKS = [{"path": str, "args": [str], "env": [str], "timeout": ("int", 0, (1 << 31) - 1), "!": ("path",)}]
_CAPS = {key: [str] for key in ("bounding", "effective", "permitted", "inheritable", "ambient")}
PROCESS_SCHEMA: dict[str, Any] = {
    "terminal": bool, "consoleSize": {"height": _U32, "width": _U32},
    "user": {"uid": _U32, "gid": _U32, "umask": _U32, "additionalGids": [_U32], "username": str},
    "args": [str], "env": [str], "cwd": str, "capabilities": _CAPS,
    "rlimits": [{"type": str, "soft": _LIMIT, "hard": _LIMIT, "!": ("type",)}], "noNewPrivileges": bool,
    "oomScoreAdj": ("int", -1000, 1000), "apparmorProfile": str, "selinuxLabel": str,
}  # fmt: skip
RESOURCES_SCHEMA: dict[str, Any] = {
    "devices": [_DEVICE_RULE],
    "memory": {"limit": _I64, "reservation": _I64, "swap": _I64, "kernel": _I64, "kernelTCP": _I64,
               "swappiness": _U64, "disableOOMKiller": bool},
    "cpu": {"shares": _U64, "quota": _I64, "period": _U64, "realtimeRuntime": _I64, "realtimePeriod": _U64,
            "cpus": str, "mems": str},
    "pids": {"limit": _I64},
    "blockIO": {"weight": ("int", 0, 65535), "leafWeight": ("int", 0, 65535),
                "weightDevice": [{"major": _I64, "minor": _I64, "weight": ("int", 0, 65535),
                                  "leafWeight": ("int", 0, 65535), "!": ("major", "minor")}],
                "throttleReadBpsDevice": _RATE, "throttleWriteBpsDevice": _RATE, "throttleReadIOPSDevice": _RATE,
                "throttleWriteIOPSDevice": _RATE},
    "hugepageLimits": [{"pageSize": str, "limit": _U64, "!": ("pageSize", "limit")}],
    "network": {"classID": _U32, "priorities": [{"name": str, "priority": _U32, "!": ("name", "priority")}]},
    "unified": {"*": str},
}  # fmt: skip
CONFIG_SCHEMA: dict[str, Any] = {
    "ociVersion": str, "hostname": str, "domainname": str, "annotations": {"*": str},
    "root": {"path": str, "readonly": bool},
    "process": PROCESS_SCHEMA,
    "mounts": [{"destination": str, "type": str, "source": str, "options": [str]}],
    "hooks": {"*": _HOOKS},
    "linux": {
        "uidMappings": _ID_MAP, "gidMappings": _ID_MAP, "sysctl": {"*": str}, "resources": RESOURCES_SCHEMA,
        "cgroupsPath": str, "namespaces": [{"type": str, "path": str}],
        "devices": [{"path": str, "type": str, "major": _I64, "minor": _I64, "fileMode": _U32, "uid": _U32,
                     "gid": _U32}],
        "seccomp": {"defaultAction": str, "defaultErrnoRet": _U32, "listenerPath": str,
                    "syscalls": [{"names": [str], "action": str, "errnoRet": _U32,
                                  "args": [{"index": _U32, "value": _U64, "valueTwo": _U64, "op": str}]}]},
        "rootfsPropagation": str, "maskedPaths": [str], "readonlyPaths": [str], "mountLabel": str,
    },
}  # fmt: skip


def check(doc: Any, schema: Any, where: str, field: str = "") -> None:
    """Raise ConfigError naming the first field of ``doc`` whose type or range ``schema`` refuses."""
    name = field or "the document"
    if isinstance(schema, dict):
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: {name}: expected a JSON object, got {_shown(doc)}")
        for key in [k for k, v in doc.items() if v is None]:
            del doc[key]
        missing = [key for key in schema.get("!", ()) if key not in doc]
        if missing:
            raise ConfigError(f"{where}: {name}: {missing[0]} is missing")
        for key, value in doc.items():
            sub = schema.get(key, schema.get("*"))
            if sub is not None:
                part = key if key.isidentifier() else repr(key)
                check(value, sub, where, f"{field}.{part}" if field else part)
    elif isinstance(schema, list):
        if not isinstance(doc, list):
            raise ConfigError(f"{where}: {name}: expected a list, got {_shown(doc)}")
        for i, item in enumerate(doc):
            check(item, schema[0], where, f"{field}[{i}]")
    elif schema is str:
        if not isinstance(doc, str):
            raise ConfigError(f"{where}: {name}: expected a string, got {_shown(doc)}")
        if "\0" in doc:
            raise ConfigError(f"{where}: {name}: {_shown(doc)} holds a NUL byte")
    elif schema is bool:
        if not isinstance(doc, bool):
            raise ConfigError(f"{where}: {name}: expected true or false, got {_shown(doc)}")
    else:
        _, lowest, highest = schema
        if not isinstance(doc, int) or isinstance(doc, bool):
            raise ConfigError(f"{where}: {name}: expected an integer, got {_shown(doc)}")
        if not lowest <= doc <= highest:
            raise ConfigError(f"{where}: {name}: {_shown(doc)} is out of range ({lowest} to {highest})")


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-12:]


def load(bundle: str) -> dict[str, Any]:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file or directory; a bundle holds config.json and its root") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the bundle's config: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: cannot read the bundle's config: JSON nested too deeply") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a runtime-spec config (expected a JSON object)")
    version = str(config.get("ociVersion", ""))
    if not version.startswith("1."):
        raise ConfigError(f"{path}: ociVersion {_shown(version)} is not supported; isolate-oci reads runtime-spec 1.x")
    check(config, CONFIG_SCHEMA, path)
    return config


def rootfs_path(bundle: str, config: dict[str, Any]) -> str:
    root = (config.get("root") or {}).get("path")
    if not root:
        raise ConfigError("config.json: root.path is missing; name the bundle's root filesystem directory")
    path = root if root.startswith("/") else os.path.join(bundle, root)
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: the root filesystem does not exist (root.path in config.json)")
    return os.path.realpath(path)


def namespaces(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, path) of ``linux.namespaces``; path "" means a new one."""
    out = []
    seen = set()
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        kind = ns.get("type", "")
        if kind not in S.NS_FLAGS:
            raise ConfigError(f"linux.namespaces: unknown type {kind!r}; use one of {', '.join(S.NS_FLAGS)}")
        if kind in seen:
            raise ConfigError(f"linux.namespaces: {kind} is listed twice")
        seen.add(kind)
        out.append((kind, ns.get("path") or ""))
    return out


def parse_options(options: list[str]) -> tuple[int, list[int], str]:
    """(flags, propagation flags, data) of a mount's options."""
    flags, propagation, data = 0, [], []
    for opt in options:
        opt = RECURSIVE.get(opt, opt)
        if opt in FLAGS:
            add, clear = FLAGS[opt]
            flags = (flags | add) & ~clear
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt in IGNORED_OPTIONS:
            continue
        elif opt in ("idmap", "ridmap"):
            raise ConfigError(f"mount option {opt!r}: id-mapped mounts are not supported")
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


class OciPlan:
    """What ``create`` needs: the clone flags, the parent's extra work, and the child's steps."""

    def __init__(self) -> None:
        self.clone_flags = 0
        self.steps: list[Step] = []
        self.post_start: list[Step] = []  # after the fifo: the start hooks, identity, seccomp
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.root = ""
        self.join_pid_fd = -1  # a pid namespace to enter before the clone (setns applies to children)
        self.fds: list[int] = []  # what the parent opened for the child, closed after the clone
        self.uid_map: list[dict[str, int]] = []
        self.gid_map: list[dict[str, int]] = []
        self.parent_joins: list[str] = []
        self.new_pid_ns = False
        self.errw = -1  # the child's end of its report pipe (isolate.process.child)


def build(
    config: dict[str, Any],
    rootfs: str,
    cgroup_version: str | None,
    cgroup_dirs: dict[str, str],
    errw: int,
    go_fd: int,
    state_dir_fd: int,
    null_fd: int,
    console_fd: int,
    no_pivot: bool,
    seccomp_program: bytes | None,
    start_hooks_state: bytes,
) -> OciPlan:
    """The steps of one container.  ``errw``/``go_fd``/``state_dir_fd``/``null_fd``/``console_fd``
    are the descriptors the child inherits (-1 when unused).  On an error the namespace files
    opened so far are closed (on success they are the caller's, in ``plan.fds``)."""
    plan = OciPlan()
    try:
        _build(plan, config, rootfs, cgroup_version, cgroup_dirs, errw, go_fd, state_dir_fd, null_fd, console_fd,
               no_pivot, seccomp_program, start_hooks_state)  # fmt: skip
    except BaseException:
        for fd in plan.fds:
            os.close(fd)
        raise
    return plan


def _build(
    plan: OciPlan,
    config: dict[str, Any],
    rootfs: str,
    cgroup_version: str | None,
    cgroup_dirs: dict[str, str],
    errw: int,
    go_fd: int,
    state_dir_fd: int,
    null_fd: int,
    console_fd: int,
    no_pivot: bool,
    seccomp_program: bytes | None,
    start_hooks_state: bytes,
) -> None:
    plan.errw = errw
    linux = config.get("linux") or {}
    process = config.get("process") or {}
    plan.root = rootfs
    kinds = dict(namespaces(config))
    # Without a mount namespace of its own the container shares the runtime's mounts: any
    # mount would land on the host, so none is made (runc would make them there); the root
    # is entered with chroot.  A mount namespace joined by path is the engine's to share:
    # the root is moved over / there instead of pivot_root, which would also move the root
    # of every other process of that namespace (pivot_root(2)).
    own_mounts = "mount" in kinds
    if not own_mounts:
        warn("no mount namespace: the config's mounts, devices and masked paths are not applied "
                    "(they would change the host's mounts); the root is entered with chroot")  # fmt: skip
    elif kinds["mount"]:
        no_pivot = True
    userns = "user" in kinds
    steps = plan.steps
    # Namespaces by path: user first (the others belong to it), pid before the clone.
    order = ["user", "network", "ipc", "uts", "cgroup"]
    for kind in order:
        path = kinds.get(kind)
        if path:
            fd = _open_ns(path, kind)
            plan.fds.append(fd)
            steps.append(S.JoinNamespace(fd, kind, path))
    for kind, path in kinds.items():
        if not path and kind != "cgroup":
            plan.clone_flags |= S.NS_FLAGS[kind]
    if kinds.get("pid"):
        plan.join_pid_fd = _open_ns(kinds["pid"], "pid")
        plan.fds.append(plan.join_pid_fd)
    plan.new_pid_ns = "pid" in kinds and not kinds["pid"]
    if userns and not kinds["user"]:
        plan.uid_map = list(linux.get("uidMappings") or [])
        plan.gid_map = list(linux.get("gidMappings") or [])
        if not plan.uid_map or not plan.gid_map:
            raise ConfigError("linux.namespaces: a new user namespace needs linux.uidMappings and gidMappings")
    if cgroup_version is not None:
        from isolate.cgroups.base import join_files

        if userns:
            plan.parent_joins = sorted({f"{d}/cgroup.procs" for d in cgroup_dirs.values()})
        else:
            steps.append(JoinCgroup(join_files(cgroup_version, cgroup_dirs)))
    if "cgroup" in kinds and not kinds["cgroup"]:
        steps.append(UnshareCgroupNs())
    if kinds.get("mount"):  # after the cgroup join: the cgroup files are the runtime's paths
        fd = _open_ns(kinds["mount"], "mount")
        plan.fds.append(fd)
        steps.append(S.JoinNamespace(fd, "mount", kinds["mount"]))
    if own_mounts:
        propagation = PROPAGATION.get(linux.get("rootfsPropagation") or "rslave", L.MS_SLAVE | L.MS_REC)
        steps.append(S.Propagation(propagation & ~L.MS_REC))
        steps.append(S.BindRoot())
        dev_bound = False
        for mount in config.get("mounts") or []:
            steps += _mount_steps(mount, cgroup_dirs, "cgroup" in kinds and not kinds["cgroup"], cgroup_version)
            if mount.get("destination", "").rstrip("/") == "/dev" and "bind" in ",".join(mount.get("options") or []):
                dev_bound = True
        if not dev_bound:
            steps += _device_steps(linux.get("devices") or [], userns)
    steps.append(S.SyncPoint(errw, go_fd, b"H"))
    if "uts" in kinds and config.get("hostname"):
        steps.append(SetHostname(str(config["hostname"])))
    if "uts" in kinds and config.get("domainname"):
        steps.append(S.SetDomainname(str(config["domainname"])))
    if not own_mounts:
        from isolate.plan.steps import Chroot

        steps.append(Chroot())
    else:
        steps.append(S.NoPivot() if no_pivot else S.PivotRoot())
    for key, value in (linux.get("sysctl") or {}).items():
        _check_sysctl(key, kinds)
        steps.append(S.Sysctl(key, str(value)))
    if own_mounts:
        steps += [MaskPath(p, after_pivot=True) for p in linux.get("maskedPaths") or []]
        steps += [RemountReadOnly(p, bind=True, after_pivot=True, missing_ok=True)
                  for p in linux.get("readonlyPaths") or []]  # fmt: skip
        if (config.get("root") or {}).get("readonly"):
            steps.append(RemountRootReadOnly())
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if process.get("terminal"):
        if console_fd < 0:
            raise ConfigError("process.terminal is true: pass --console-socket so the engine gets the terminal")
        size = process.get("consoleSize") or {}
        steps.append(S.Console(console_fd, uid, int(size.get("height", 0)), int(size.get("width", 0))))
    cwd = process.get("cwd") or "/"
    if not cwd.startswith("/"):
        raise ConfigError(f"process.cwd {cwd!r}: must be an absolute path")
    steps.append(Chdir(cwd))
    steps.append(ExecOnlyBeneathRoot())  # capabilities still whole here: Landlock needs no no_new_privs
    if process.get("oomScoreAdj") is not None:
        steps.append(SetOomScoreAdj(int(process["oomScoreAdj"])))
    rlimits = []
    for item in process.get("rlimits") or []:
        name = item.get("type", "")
        if name not in RLIMITS:
            raise ConfigError(f"process.rlimits: unknown type {name!r}, e.g. RLIMIT_NOFILE")
        rlimits.append((RLIMITS[name], rlimit_value(item.get("soft", 0)), rlimit_value(item.get("hard", 0))))
    if rlimits:
        import resource  # noqa: F401 - the child cannot import once it left the host's root

        steps.append(S.SetRlimits(rlimits))
    plan.argv = [str(a) for a in process.get("args") or []]
    if not plan.argv:
        raise ConfigError("process.args is empty: give the container a command")
    plan.env = dict(item.split("=", 1) if "=" in item else (item, "") for item in process.get("env") or [])
    steps.append(S.CheckExecutable(plan.argv[0], plan.env.get("PATH", "")))
    steps.append(S.WaitForStart(errw, state_dir_fd, null_fd))
    hooks = (config.get("hooks") or {}).get("startContainer") or []
    if hooks:
        steps.append(S.RunHooks(hooks, start_hooks_state))
    _check_capabilities(process.get("capabilities"))
    if process.get("selinuxLabel") or linux.get("mountLabel"):
        if not os.path.exists("/sys/fs/selinux/enforce"):
            raise ConfigError(
                "process.selinuxLabel / linux.mountLabel: SELinux is not enabled on this host; drop the label"
            )
        raise ConfigError(
            "process.selinuxLabel / linux.mountLabel: SELinux labels are not supported by isolate-oci yet"
        )
    profile = process.get("apparmorProfile")
    if profile:
        try:
            with open("/sys/module/apparmor/parameters/enabled") as f:
                enabled = f.read().strip() == "Y"
        except OSError:
            enabled = False
        if not enabled:
            raise ConfigError(
                f"process.apparmorProfile {profile}: AppArmor is not enabled on this host; drop the profile"
            )
        steps.append(S.ApparmorExec(str(profile)))
    nnp = bool(process.get("noNewPrivileges"))
    identity = S.Identity(uid, gid, [int(g) for g in user.get("additionalGids") or []],
                          int(user["umask"]) if user.get("umask") is not None else None,
                          process.get("capabilities"), last_cap())  # fmt: skip
    seccomp = LoadSeccomp(seccomp_program) if seccomp_program else None
    # Without no_new_privs only a privileged process may load a filter: before the user switch.
    if seccomp is not None and not nnp:
        steps.append(seccomp)
    if nnp:
        steps.append(NoNewPrivs())
    steps.append(identity)
    if seccomp is not None and nnp:
        steps.append(seccomp)


def _check_capabilities(caps: dict[str, list[str]] | None) -> None:
    """A capability the runtime itself lacks cannot be granted: say so instead of leaving it out
    (a host may withhold CAP_SYS_RESOURCE from root, as these machines do)."""
    if not caps:
        return
    from isolate.plan.security import CAP_NUMBER

    have = L.cap_permitted()
    # The five sets of the spec only (checked at load): other keys are not capabilities.
    wanted = {name for key in _CAPS for name in caps.get(key) or []}
    unknown = sorted(n for n in wanted if n.upper().removeprefix("CAP_") not in CAP_NUMBER)
    if unknown:
        raise ConfigError(f"process.capabilities: unknown capability {', '.join(unknown)}; see capabilities(7)")
    missing = sorted(n for n in wanted if not have >> CAP_NUMBER[n.upper().removeprefix("CAP_")] & 1)
    if missing:
        raise ConfigError(
            f"process.capabilities: {', '.join(missing)} cannot be granted: the runtime itself does not hold "
            "them on this host; remove them from the config"
        )


def rlimit_value(value: Any) -> int:
    """A limit of config.json's process.rlimits as setrlimit(2) takes it."""
    value = int(value)
    return -1 if value >= U64_MAX or value < 0 else value  # RLIM_INFINITY


def _open_ns(path: str, kind: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"linux.namespaces: {kind} namespace {path}: {(exc.strerror or str(exc)).lower()}") from None


def _check_sysctl(key: str, kinds: dict[str, str]) -> None:
    if key in SYSCTL_IPC or key.startswith("fs.mqueue."):
        if "ipc" in kinds:
            return
        raise ConfigError(f"linux.sysctl {key}: needs an ipc namespace of the container's own")
    if key.startswith("net."):
        if "network" in kinds:
            return
        raise ConfigError(f"linux.sysctl {key}: needs a network namespace of the container's own")
    if key in ("kernel.hostname", "kernel.domainname"):
        raise ConfigError(f"linux.sysctl {key}: set hostname/domainname in config.json instead")
    raise ConfigError(f"linux.sysctl {key}: not namespaced; writing it would change the host, so it is refused")


def _mount_steps(mount: dict[str, Any], cgroup_dirs: dict[str, str], own_cgroupns: bool,
                 version: str | None) -> list[Step]:  # fmt: skip
    dest = mount.get("destination") or ""
    if not dest.startswith("/"):
        raise ConfigError(f"mounts: destination {dest!r} must be an absolute path in the container")
    fstype = mount.get("type") or ""
    source = mount.get("source") or fstype or "none"
    flags, propagation, data = parse_options([str(o) for o in mount.get("options") or []])
    is_bind = bool(flags & L.MS_BIND) or fstype == "bind"
    if fstype == "cgroup" or fstype == "cgroup2":
        return _cgroup_mount(dest, flags, cgroup_dirs, own_cgroupns, version)
    if is_bind:
        flags |= L.MS_BIND
        if not os.path.exists(source):
            raise ConfigError(f"mounts: {dest}: bind source {source} does not exist on the host")
    return [S.OciMount(source, dest, fstype, flags, data, propagation, is_bind)]


class CgroupMount(Step):
    """The container's own cgroup at ``dest`` (read-only if asked): cgroup2 when the container
    has its own cgroup namespace on v2, else binds of its directories, one per hierarchy,
    under a tmpfs as the host lays them out (symlinks for co-mounted ones like cpu,cpuacct)."""

    __slots__ = ("dest", "ro", "binds", "links", "unified")
    what = "mounting the cgroup filesystem"

    def __init__(self, dest: str, ro: bool, binds: list[tuple[str, str]], links: list[tuple[str, str]],
                 unified: bool) -> None:  # fmt: skip
        self.dest = dest
        self.ro = ro
        self.binds = binds
        self.links = links
        self.unified = unified

    def apply(self, root: str) -> None:
        from isolate.plan.steps import resolve_in_root

        target = resolve_in_root(root, self.dest, "dir")
        ro = L.MS_RDONLY if self.ro else 0
        base = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
        if self.unified:
            L.mount("cgroup2", target, "cgroup2", base | ro)
            return
        if len(self.binds) == 1 and self.binds[0][1] == "":
            S.OciMount(self.binds[0][0], self.dest, "", L.MS_BIND | base | ro, "", [], True).apply(root)
            return
        L.mount("tmpfs", target, "tmpfs", base, "mode=755")
        for host_dir, name in self.binds:
            S.OciMount(host_dir, f"{self.dest}/{name}", "", L.MS_BIND | base | ro, "", [], True).apply(root)
        for link, name in self.links:
            os.symlink(name, os.path.join(target, link))
        if ro:
            L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | base)

    def shell(self, root: str) -> str:
        return f"# the container's cgroup at {self.dest}"


def _cgroup_mount(dest: str, flags: int, dirs: dict[str, str], own_ns: bool, version: str | None) -> list[Step]:
    ro = bool(flags & L.MS_RDONLY)
    if version is None or not dirs:
        return []
    if version == "v2":
        if own_ns:
            return [CgroupMount(dest, ro, [], [], True)]
        return [CgroupMount(dest, ro, [(dirs["unified"], "")], [], False)]
    from isolate.cgroups import layout

    options = layout().v1_options
    binds, links = [], []
    seen = set()
    for controller, directory in sorted(dirs.items()):
        point = next((p for p in options if directory == p or directory.startswith(p + "/")), None)
        name = os.path.basename(point) if point else controller
        if name not in seen:
            seen.add(name)
            binds.append((directory, name))
        if controller != name and controller not in seen:
            seen.add(controller)
            links.append((controller, name))
    return [CgroupMount(dest, ro, binds, links, False)]


def _device_steps(devices: list[dict[str, Any]], userns: bool) -> list[Step]:
    from isolate.plan.steps import Symlink

    steps: list[Step] = []
    listed = {d.get("path") for d in devices}
    for path, major, minor in DEFAULT_DEVICES:
        if path not in listed:
            steps.append(MakeDevice(path, major, minor, 0o666, "c", 0, 0, userns))
    for dev in devices:
        path = dev.get("path") or ""
        if not path.startswith("/dev/"):
            raise ConfigError(f"linux.devices: path {path!r} must be below /dev")
        kind = dev.get("type") or "c"
        if kind not in ("c", "b", "u", "p"):
            raise ConfigError(f"linux.devices {path}: type {kind!r}: use c, b, u or p")
        major, minor, mode, uid, gid = (int(dev.get(key, 0o666 if key == "fileMode" else 0))
                                        for key in ("major", "minor", "fileMode", "uid", "gid"))  # fmt: skip
        steps.append(MakeDevice(path, major, minor, mode, kind, uid, gid, userns))
    steps += [Symlink(target, path) for target, path in DEV_LINKS]
    steps.append(_PtmxLink())
    return steps


class _PtmxLink(Step):
    """/dev/ptmx -> pts/ptmx, so a pty comes from the container's own devpts (runc's setupPtmx)."""

    __slots__ = ()
    what = "linking /dev/ptmx"

    def apply(self, root: str) -> None:
        from isolate.plan.steps import resolve_in_root

        dev = resolve_in_root(root, "/dev", "dir")
        link = os.path.join(dev, "ptmx")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink("pts/ptmx", link)

    def shell(self, root: str) -> str:
        return f"ln -sf pts/ptmx {root}/dev/ptmx"
