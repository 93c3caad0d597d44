"""The steps an OCI container needs beyond ``isolate run``'s (they run in the child, like spec.py's).

The child imports nothing once it left the host's root: every module these steps use
(fcntl, termios, socket, json) is imported here, by the parent, before the clone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import termios

from isolate import _libc
from isolate.plan.security import CAP_NUMBER
from isolate.plan.steps import Step, check_bound, fd_path, open_inside, quote, resolve_in_root
from isolate.process.child import ExecLookupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT_RAISE = 2
NS_FLAGS = {
    "pid": _libc.CLONE_NEWPID, "network": _libc.CLONE_NEWNET, "mount": _libc.CLONE_NEWNS,
    "ipc": _libc.CLONE_NEWIPC, "uts": _libc.CLONE_NEWUTS, "user": _libc.CLONE_NEWUSER,
    "cgroup": _libc.CLONE_NEWCGROUP,
}  # fmt: skip


class JoinNamespace(Step):
    """setns(2) into a namespace the engine made (``linux.namespaces[].path``), e.g. a pod's network."""

    __slots__ = ("fd", "kind", "path")
    what = "joining a namespace"

    def __init__(self, fd: int, kind: str, path: str) -> None:
        self.fd = fd  # opened by the parent: the path may not be reachable from the child's mounts
        self.kind = kind
        self.path = path

    def apply(self, root: str) -> None:
        _libc.setns(self.fd, NS_FLAGS[self.kind])
        os.close(self.fd)

    def shell(self, root: str) -> str:
        return f"nsenter --{self.kind.replace('network', 'net')}={quote(self.path)}"


class Propagation(Step):
    """The root's propagation (``linux.rootfsPropagation``, default rslave: host mounts still
    reach the container, nothing goes back), then the rootfs's parent made private so that
    pivot_root accepts it (pivot_root(2): the new root's parent must not be shared)."""

    __slots__ = ("flags",)
    what = "setting mount propagation"

    def __init__(self, flags: int) -> None:
        self.flags = flags

    def apply(self, root: str) -> None:
        _libc.mount(None, "/", None, self.flags | _libc.MS_REC)
        parent = os.path.dirname(root.rstrip("/")) or "/"
        while True:
            try:
                _libc.mount(None, parent, None, _libc.MS_PRIVATE)
                break
            except OSError as exc:
                if exc.errno != errno.EINVAL or parent == "/":  # EINVAL: not a mount point, go up
                    raise
                parent = os.path.dirname(parent)

    def shell(self, root: str) -> str:
        return "mount --make-rslave /"


class PivotRoot(Step):
    """pivot_root(".", ".") into the bundle's root, then detach the old root -- made a slave
    first, as runc does: with ``rootfsPropagation`` shared on a host whose mounts are shared
    (systemd's default) the old root's mounts are peers of the host's, and detaching them
    unmounted the host's own (its /sys/fs/cgroup hierarchies, /dev/pts, /dev/shm).
    """

    __slots__ = ()
    what = "pivot_root"

    def apply(self, root: str) -> None:
        os.chdir(root)
        _libc.pivot_root(".", ".")
        # The old root now sits on top of "."; a slave receives the host's events and sends none.
        _libc.mount(None, ".", None, _libc.MS_SLAVE | _libc.MS_REC)
        _libc.umount2(".", _libc.MNT_DETACH)
        os.chdir("/")

    def shell(self, root: str) -> str:
        return f"cd {quote(root)} && pivot_root . . && mount --make-rslave . && umount -l . && cd /"


class BindRoot(Step):
    """The bundle's root bound onto itself: pivot_root needs a mount point."""

    __slots__ = ()
    what = "binding the root filesystem"

    def apply(self, root: str) -> None:
        _libc.mount(root, root, None, _libc.MS_BIND | _libc.MS_REC)

    def shell(self, root: str) -> str:
        return f"mount --rbind {quote(root)} {quote(root)}"


class OciMount(Step):
    """One entry of ``mounts``: a filesystem or a bind, then its propagation and read-only remount."""

    __slots__ = ("source", "target", "fstype", "flags", "data", "propagation", "is_bind", "host_source")
    what = "mount"

    def __init__(self, source: str, target: str, fstype: str, flags: int, data: str, propagation: list[int],
                 is_bind: bool) -> None:  # fmt: skip
        self.source = source
        self.target = target
        self.fstype = fstype
        self.flags = flags
        self.data = data
        self.propagation = propagation
        self.is_bind = is_bind

    def apply(self, root: str) -> None:
        if self.is_bind:
            kind = "dir" if os.path.isdir(self.source) else "file"
        else:
            kind = "dir"
        target = resolve_in_root(root, self.target, kind)
        # On a descriptor looked up again inside the root, not on the path: a component swapped
        # for a symlink meanwhile would lead the mount out of it (CVE-2021-30465).
        fd = open_inside(root, target)
        try:
            if self.is_bind:
                _libc.mount(self.source, fd_path(fd, target), None, self.flags & ~_libc.MS_RDONLY)
            else:
                _libc.mount(self.source, fd_path(fd, target), self.fstype, self.flags, self.data or None)
        finally:
            if fd >= 0:
                os.close(fd)
        remount = self.flags & (_libc.MS_RDONLY | _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC
                                | _libc.MS_NOATIME | _libc.MS_STRICTATIME) if self.is_bind else 0  # fmt: skip
        if not remount and not self.propagation:
            return
        mounted = open_inside(root, target)  # now the new mount's root
        try:
            if self.is_bind:
                check_bound(mounted, self.source)
            at = fd_path(mounted, target)
            if remount:
                kept = os.statvfs(at).f_flag & (_libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)
                _libc.mount(None, at, None, _libc.MS_BIND | _libc.MS_REMOUNT | remount | kept)
            for flag in self.propagation:
                _libc.mount(None, at, None, flag)
        finally:
            if mounted >= 0:
                os.close(mounted)

    def shell(self, root: str) -> str:
        opts = f" -o {quote(self.data)}" if self.data else ""
        if self.is_bind:
            return f"mount --bind {quote(self.source)} {quote(root + self.target)}"
        return f"mount -t {self.fstype}{opts} {quote(self.source)} {quote(root + self.target)}"


class SyncPoint(Step):
    """Tell the parent a point was reached (one byte on the error pipe) and wait for its go.

    "H": the namespaces and mounts are ready, the parent runs the prestart, createRuntime
    and createContainer hooks.  The parent answers on ``go_fd``: one byte to go on,
    end-of-file to stop (a hook failed).
    """

    __slots__ = ("errw", "go_fd", "tag")
    what = "waiting for the runtime's hooks"

    def __init__(self, errw: int, go_fd: int, tag: bytes) -> None:
        self.errw = errw
        self.go_fd = go_fd
        self.tag = tag

    def apply(self, root: str) -> None:
        os.write(self.errw, self.tag)
        if os.read(self.go_fd, 1) != b"1":
            os._exit(125)

    def shell(self, root: str) -> str:
        return "# the runtime runs the prestart / createRuntime / createContainer hooks here"


class Sysctl(Step):
    """``linux.sysctl``: only namespaced keys reach here (the parent checked), written in /proc/sys."""

    __slots__ = ("key", "value")
    what = "sysctl"

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value

    def apply(self, root: str) -> None:
        path = "/proc/sys/" + self.key.replace(".", "/")
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, self.value.encode())
        finally:
            os.close(fd)

    def shell(self, root: str) -> str:
        return f"sysctl -w {quote(self.key + '=' + self.value)}"


class SetDomainname(Step):
    __slots__ = ("name",)
    what = "setdomainname"

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, root: str) -> None:
        fd = os.open("/proc/sys/kernel/domainname", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, self.name.encode())
        finally:
            os.close(fd)

    def shell(self, root: str) -> str:
        return f"domainname {quote(self.name)}"


class NoPivot(Step):
    """``--no-pivot``: move the root over / and chroot (for roots on ramfs, where pivot_root fails)."""

    __slots__ = ()
    what = "moving the root"

    def apply(self, root: str) -> None:
        os.chdir(root)
        # A move onto a shared "/" would be copied onto its peers: the host's "/" when the
        # root propagation is shared and the root lives on a mount of its own.
        _libc.mount(None, "/", None, _libc.MS_SLAVE)
        _libc.mount(root, "/", None, _libc.MS_MOVE)
        os.chroot(".")
        os.chdir("/")

    def shell(self, root: str) -> str:
        return f"cd {quote(root)} && mount --move . / && chroot ."


from isolate.process.terminal import open_pty_pair  # noqa: E402 - shared with isolate run -it


class Console(Step):
    """``process.terminal``: a pty from the container's own devpts; the master goes to the
    engine's console socket (SCM_RIGHTS, with the pty's name as runc sends it), the slave
    becomes stdin, stdout, stderr and the controlling terminal."""

    __slots__ = ("sock_fd", "uid", "rows", "cols")
    what = "setting up the console"

    def __init__(self, sock_fd: int, uid: int, rows: int, cols: int) -> None:
        self.sock_fd = sock_fd
        self.uid = uid
        self.rows = rows
        self.cols = cols

    def apply(self, root: str) -> None:
        slave = open_pty_pair(self.sock_fd, self.uid, self.rows, self.cols)
        for target in (0, 1, 2):
            os.dup2(slave, target, inheritable=True)
        if slave > 2:
            os.close(slave)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def shell(self, root: str) -> str:
        return "# open /dev/ptmx, send the master to the console socket, make the slave stdio"


class CheckExecutable(Step):
    """Find the command before reporting "created", as runc does, so a missing or
    non-executable command fails ``create`` with the words engines map to 127 and 126."""

    __slots__ = ("argv0", "path_var")
    what = "looking up the command"

    def __init__(self, argv0: str, path_var: str) -> None:
        self.argv0 = argv0
        self.path_var = path_var

    def apply(self, root: str) -> None:
        if "/" in self.argv0:
            candidates = [self.argv0]
        else:
            candidates = [f"{d or '.'}/{self.argv0}" for d in self.path_var.split(":")]
        denied = None
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return
            denied = path
        if denied is not None:
            raise ExecLookupError("noexec", f'exec: "{self.argv0}": {denied}: permission denied', errno.EACCES)
        if "/" in self.argv0:
            raise ExecLookupError("notfound", f'exec: "{self.argv0}": stat {self.argv0}: no such file or directory',
                                   errno.ENOENT)  # fmt: skip
        raise ExecLookupError("notfound", f'exec: "{self.argv0}": executable file not found in $PATH', errno.ENOENT)

    def shell(self, root: str) -> str:
        return f"command -v {quote(self.argv0)}"


class WaitForStart(Step):
    """Report "created" to ``create`` ("R" on the error pipe), then block until ``start``
    opens the exec fifo (runc's design: the container's init waits, the runtime exits).

    The fifo is opened relative to a descriptor of its directory, and /dev/null is a
    descriptor too: the container may have neither /proc nor /dev (no mount namespace)."""

    __slots__ = ("errw", "dir_fd", "null_fd")
    what = "waiting for start"

    def __init__(self, errw: int, dir_fd: int, null_fd: int) -> None:
        self.errw = errw
        self.dir_fd = dir_fd  # O_PATH of the container's state directory, opened by the parent
        self.null_fd = null_fd

    def apply(self, root: str) -> None:
        os.write(self.errw, b"R")
        # create has exited by the time anything else could go wrong: failures from here on
        # have nobody to read them, and a write to a pipe without reader would be SIGPIPE.
        os.dup2(self.null_fd, self.errw, inheritable=False)
        os.close(self.null_fd)
        fd = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        os.write(fd, b"0")
        os.close(fd)
        os.close(self.dir_fd)

    def shell(self, root: str) -> str:
        return "# wait until `isolate-oci start` opens the exec fifo"


class RunHooks(Step):
    """startContainer hooks: in the container, after start, before the command (fork, exec, wait)."""

    __slots__ = ("hooks", "state_json")
    what = "running the startContainer hooks"

    def __init__(self, hooks: list[dict[str, Any]], state_json: bytes) -> None:
        self.hooks = hooks
        self.state_json = state_json

    def apply(self, root: str) -> None:
        import _signal as signal
        import time

        for hook in self.hooks:
            r, w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                try:
                    os.dup2(r, 0)
                    os.execve(hook["path"], hook.get("args") or [hook["path"]], _env(hook.get("env")))
                finally:
                    os._exit(127)
            os.close(r)
            try:
                os.write(w, self.state_json)
            except OSError:
                pass
            os.close(w)
            timeout = hook.get("timeout")
            deadline = time.monotonic() + timeout if timeout else None
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    raise OSError(errno.ETIMEDOUT, f"startContainer hook {hook['path']} timed out")
                time.sleep(0.001)
            if status != 0:
                raise OSError(errno.EIO, f"startContainer hook {hook['path']} failed: status {status}")

    def shell(self, root: str) -> str:
        return "; ".join(quote(h["path"]) for h in self.hooks)


def _env(items: list[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items or [] if "=" in item)


class Identity(Step):
    """``process.user`` and ``process.capabilities``, in runc's order: drop the bounding set,
    keep capabilities across setuid (PR_SET_KEEPCAPS), switch ids, then set the effective,
    permitted and inheritable sets and raise the ambient ones (capabilities(7))."""

    __slots__ = ("uid", "gid", "groups", "umask", "bounding", "effective", "permitted", "inheritable", "ambient",
                 "last")  # fmt: skip
    what = "switching user and capabilities"

    def __init__(self, uid: int, gid: int, groups: list[int], umask: int | None, caps: dict[str, list[str]] | None,
                 last: int) -> None:  # fmt: skip
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.umask = umask
        caps = caps if caps is not None else None
        self.bounding = _mask(caps, "bounding")
        self.effective = _mask(caps, "effective")
        self.permitted = _mask(caps, "permitted")
        self.inheritable = _mask(caps, "inheritable")
        self.ambient = _mask(caps, "ambient")
        self.last = last

    def apply(self, root: str) -> None:
        if self.bounding is not None:
            for cap in range(self.last + 1):
                if not self.bounding >> cap & 1:
                    _libc.prctl(_libc.PR_CAPBSET_DROP, cap)
        _libc.prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups(self.groups)
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        _libc.prctl(PR_SET_KEEPCAPS, 0)
        if self.umask is not None:
            os.umask(self.umask)
        if self.permitted is not None:
            have = _libc.cap_permitted()
            _libc.capset((self.effective or 0) & have, self.permitted & have, (self.inheritable or 0) & have)
            try:
                _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
                for cap in range(self.last + 1):
                    if (self.ambient or 0) >> cap & 1:
                        _libc.prctl(_libc.PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
            except OSError:
                pass  # no ambient set before Linux 4.3

    def shell(self, root: str) -> str:
        return f"setpriv --reuid {self.uid} --regid {self.gid} --groups {','.join(map(str, self.groups)) or '-'}"


def _mask(caps: dict[str, list[str]] | None, key: str) -> int | None:
    if caps is None:
        return None
    mask = 0
    for name in caps.get(key) or []:
        number = CAP_NUMBER.get(name.upper().removeprefix("CAP_"))
        if number is not None:
            mask |= 1 << number
    return mask


class ApparmorExec(Step):
    """``process.apparmorProfile``: the profile the kernel switches to at the next execve
    (what aa-exec does: "exec PROFILE" written to /proc/self/attr/apparmor/exec)."""

    __slots__ = ("profile",)
    what = "setting the AppArmor profile"

    def __init__(self, profile: str) -> None:
        self.profile = profile

    def apply(self, root: str) -> None:
        for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.write(fd, f"exec {self.profile}".encode())
            finally:
                os.close(fd)
            return
        raise OSError(errno.ENOENT, "no /proc/self/attr/apparmor/exec: is AppArmor enabled?")

    def shell(self, root: str) -> str:
        return f"aa-exec -p {quote(self.profile)} --"


class SetRlimits(Step):
    """``process.rlimits``, with the resource module imported by the parent."""

    __slots__ = ("limits",)
    what = "setrlimit"

    def __init__(self, limits: list[tuple[int, int, int]]) -> None:
        self.limits = limits

    def apply(self, root: str) -> None:
        import resource

        for number, soft, hard in self.limits:
            resource.setrlimit(number, (soft, hard))

    def shell(self, root: str) -> str:
        return "; ".join(f"prlimit --pid $$ --{n}={s}:{h}" for n, s, h in self.limits)
