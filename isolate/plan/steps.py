"""The plan of a sandbox: an ordered list of steps, built by the parent, run by the child.

Each step is plain data (so the plan pickles to the spawn helper and prints as the shell
commands that do the same by hand) with an ``apply`` method that performs it with
syscalls.  Paths inside the sandbox are written relative to the new root and resolved
with :func:`resolve_in_root`, so a symlink in an image can never send a mount outside it.
"""

from __future__ import annotations

import errno
import os
import stat

from isolate import _libc

TYPE_CHECKING = False  # typing and shlex cost milliseconds to import; shell() is rarely run
if TYPE_CHECKING:
    from typing import Any


_MS_NAMES = [
    (_libc.MS_RDONLY, "ro"),
    (_libc.MS_NOSUID, "nosuid"),
    (_libc.MS_NODEV, "nodev"),
    (_libc.MS_NOEXEC, "noexec"),
    (_libc.MS_NOATIME, "noatime"),
    (_libc.MS_STRICTATIME, "strictatime"),
]
# statvfs(3) f_flag bits that have the same value as the MS_* flag of the same name.
_KEEP_ON_REMOUNT = _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC | _libc.MS_NOATIME | 2048


# Where, in the child building a root, the filesystems it mounted itself lie: (root, path
# inside) -> the path's resolved components.  What is under a fresh tmpfs, proc or sysfs is
# not the image's, so resolving a path below one starts there instead of checking every
# component from the root again (a mount point is never a symlink).
_fresh: dict[tuple[str, str], list[str]] = {}
# The host paths (below the root) of the binds the child made: below one, the tree is a host
# directory another sandbox may share and change while this one is built.
_binds: dict[str, list[str]] = {}


def resolve_in_root(root: str, path: str, create: str | None = None) -> str:
    """Host path of ``path`` as seen from inside ``root``, following symlinks as chroot would.

    An absolute symlink restarts at ``root`` and ``..`` stops at ``root``: whatever the
    image holds, the result lies under ``root``.  With ``create`` ("dir" or "file") the
    missing components are made (parents as directories, the last one as ``create``).
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    if _fresh and ".." not in parts:
        for n in range(len(parts), 0, -1):
            known = _fresh.get((root, "/".join(parts[:n])))
            if known is not None:
                done = list(known)
                del parts[:n]
                break
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, name)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if create is None:
                raise
            try:
                _create_inside(root, done, name, "dir" if parts or create == "dir" else "file")
            except FileExistsError:  # made meanwhile (a sandbox sharing the tree): look again
                links += 1
                if links > 40:
                    raise
                parts.insert(0, name)
                continue
            done.append(name)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:  # the kernel's own limit (MAXSYMLINKS), path_resolution(7)
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(name)
    return os.path.join(root, *done)


def _create_inside(root: str, done: list[str], name: str, kind: str) -> None:
    """Make ``name`` ("dir" or "file") in the directory ``done`` of ``root``, that directory
    opened again inside ``root`` (see open_inside): a component swapped for a symlink since
    resolve_in_root looked at it cannot send the new entry out of the root (CVE-2018-15664)."""
    parent = open_inside(root, os.path.join(root, *done), os.O_DIRECTORY)
    if parent < 0:  # before Linux 5.6: by path, as always
        parent = os.open(os.path.join(root, *done), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=parent))
    finally:
        os.close(parent)


def open_inside(root: str, target: str, flags: int = 0) -> int:
    """An O_PATH descriptor of ``target`` (a host path below ``root``, as resolve_in_root made
    it), looked up again by the kernel as if ``root`` were "/" (openat2, RESOLVE_IN_ROOT).

    Mounting on its /proc/self/fd path lands in the root even if another sandbox sharing the
    tree (a volume) swapped a component for a symlink since resolve_in_root looked: mount(2) on
    the path would follow that symlink out of it (CVE-2021-30465).  -1 before Linux 5.6, where
    the caller falls back to the path."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _libc.open_in_root(root_fd, os.path.relpath(target, root), os.O_PATH | flags)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return -1
        raise
    finally:
        os.close(root_fd)


def fd_path(fd: int, fallback: str) -> str:
    """What to pass mount(2) for a descriptor from open_inside (the path when there is none)."""
    return f"/proc/self/fd/{fd}" if fd >= 0 else fallback


def check_bound(fd: int, source: str) -> None:
    """``fd`` (open_inside of a bind's target, once bound) must be the root of that bind: the
    source itself.  Else the path was swapped in between, and a remount (read-only, propagation)
    would change something else than the bind."""
    if fd >= 0:
        got, want = os.fstat(fd), os.stat(source)
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
            raise OSError(errno.EBUSY, "the mount point changed while it was mounted on")


def _flag_words(flags: int) -> list[str]:
    return [name for bit, name in _MS_NAMES if flags & bit]


class Step:
    """One action of the plan.  ``apply`` runs in the child, before the command is exec'd.

    Steps are plain slotted classes, not dataclasses: ``import isolate`` must stay cheap
    and dataclass generation costs a few milliseconds per import.
    """

    __slots__: tuple[str, ...] = ()
    #: short label used in error messages: "isolate: <what> failed: ..."
    what = "step"

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def apply(self, root: str) -> None:
        raise NotImplementedError

    def shell(self, root: str) -> str:
        raise NotImplementedError


class MakeMountsPrivate(Step):
    """Stop mount events from propagating back to the host (mount_namespaces(7))."""

    __slots__ = ()

    what = "making mounts private"

    def apply(self, root: str) -> None:
        _libc.mount(None, "/", None, _libc.MS_REC | _libc.MS_PRIVATE)

    def shell(self, root: str) -> str:
        return "mount --make-rprivate /"


class Mount(Step):
    """mount(2) of a filesystem or a bind.  ``target`` is inside the root unless ``host_target``.

    ``create`` makes a missing target ("dir" or "file"); "" skips the mount when it is missing.
    """

    __slots__ = ("source", "target", "fstype", "flags", "data", "host_target", "create")

    def __init__(
        self,
        source: str,
        target: str,
        fstype: str | None,
        flags: int = 0,
        data: str | None = None,
        host_target: bool = False,
        create: str = "dir",
    ) -> None:
        self.source = source
        self.target = target
        self.fstype = fstype
        self.flags = flags
        self.data = data
        self.host_target = host_target
        self.create = create

    what = "mount"

    def target_path(self, root: str) -> str:
        if self.host_target:
            return self.target
        return resolve_in_root(root, self.target, self.create or None)

    def apply(self, root: str) -> None:
        try:
            target = self.target_path(root)
        except FileNotFoundError:
            if self.create == "":  # optional: a path this kernel may not have (e.g. /proc/bus)
                return
            raise
        # Below a bind (a volume), a sandbox sharing it could swap a component of the target for a
        # symlink since it was resolved: mount on a descriptor looked up inside the root.  The
        # rest of the root (the overlay, fresh filesystems) is this sandbox's alone: the path
        # is enough, and cheaper.
        shared = not self.host_target and any(target.startswith(b + "/") for b in _binds.get(root, ()))
        fd = open_inside(root, target) if shared else -1
        try:
            if self.flags & _libc.MS_BIND and self.flags & _libc.MS_RDONLY:
                # A bind ignores MS_RDONLY; read-only needs a second, remounting call, on the
                # new mount (the target looked up again).  Keep the source's nosuid/nodev/noexec:
                # as real root we could drop them, and must not.
                _libc.mount(self.source, fd_path(fd, target), None, self.flags & ~_libc.MS_RDONLY)
                bound = open_inside(root, target) if shared else -1
                try:
                    check_bound(bound, self.source)
                    kept = os.statvfs(fd_path(bound, target)).f_flag & _KEEP_ON_REMOUNT
                    flags = _libc.MS_BIND | _libc.MS_REMOUNT | _libc.MS_RDONLY | kept
                    _libc.mount(None, fd_path(bound, target), None, flags)
                finally:
                    if bound >= 0:
                        os.close(bound)
            else:
                _libc.mount(self.source, fd_path(fd, target), self.fstype, self.flags, self.data)
        finally:
            if fd >= 0:
                os.close(fd)
        if not self.host_target and not self.flags & _libc.MS_BIND:
            key = "/".join(p for p in self.target.split("/") if p not in ("", "."))
            _fresh[(root, key)] = target[len(root) :].strip("/").split("/")
        elif not self.host_target:
            _binds.setdefault(root, []).append(target)

    def shell(self, root: str) -> str:
        target = self.target if self.host_target else root + self.target
        opts = _flag_words(self.flags & ~_libc.MS_BIND & ~_libc.MS_REC)
        if self.data:
            opts.append(self.data)
        if self.flags & _libc.MS_BIND:
            kind = "--rbind" if self.flags & _libc.MS_REC else "--bind"
            cmd = f"mount {kind} {quote(self.source)} {quote(target)}"
            if self.flags & _libc.MS_RDONLY:
                cmd += f" && mount -o remount,bind,ro {quote(target)}"
            return cmd
        optstr = f" -o {quote(','.join(opts))}" if opts else ""
        return f"mount -t {self.fstype}{optstr} {quote(self.source)} {quote(target)}"


class MakeDir(Step):
    __slots__ = ("path", "mode", "host_path")

    def __init__(self, path: str, mode: int = 0o755, host_path: bool = False) -> None:
        self.path = path
        self.mode = mode
        self.host_path = host_path

    what = "mkdir"

    def apply(self, root: str) -> None:
        path = self.path if self.host_path else resolve_in_root(root, self.path, "dir")
        os.makedirs(path, self.mode, exist_ok=True)
        os.chmod(path, self.mode)  # makedirs' mode is filtered by the umask

    def shell(self, root: str) -> str:
        path = self.path if self.host_path else root + self.path
        return f"mkdir -p -m {self.mode:o} {quote(path)}"


class Symlink(Step):
    __slots__ = ("target", "path", "host_path")

    def __init__(self, target: str, path: str, host_path: bool = False) -> None:
        self.target = target
        self.path = path
        self.host_path = host_path

    what = "symlink"

    def apply(self, root: str) -> None:
        if self.host_path:
            link = self.path
        else:
            parent, name = os.path.split(self.path)
            link = os.path.join(resolve_in_root(root, parent, "dir"), name)
        try:
            os.symlink(self.target, link)
        except FileExistsError:
            if os.path.islink(link) and os.readlink(link) == self.target:
                return
            raise

    def shell(self, root: str) -> str:
        path = self.path if self.host_path else root + self.path
        return f"ln -s {quote(self.target)} {quote(path)}"


class MakeDevice(Step):
    """A device node.  ``isolate run``'s /dev is a fresh tmpfs, so only what is listed exists;
    the OCI front end makes ``linux.devices`` (replacing what the image has there, as runc
    does) and, in a user namespace, where mknod is refused, binds the host's node instead."""

    __slots__ = ("path", "major", "minor", "mode", "kind", "uid", "gid", "bind")
    what = "mknod"

    def __init__(self, path: str, major: int, minor: int, mode: int = 0o666, kind: str = "c",
                 uid: int | None = None, gid: int | None = None, bind: bool = False) -> None:  # fmt: skip
        self.path = path
        self.major = major
        self.minor = minor
        self.mode = mode & 0o7777
        self.kind = kind  # as mknod(1) spells it: c (or u), b, p
        self.uid = uid
        self.gid = gid
        self.bind = bind

    def apply(self, root: str) -> None:
        parent, name = os.path.split(self.path)
        target = os.path.join(resolve_in_root(root, parent, "dir"), name)
        if os.path.lexists(target):
            os.unlink(target)
        if self.bind:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            _libc.mount(self.path, target, None, _libc.MS_BIND)
            return
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[self.kind]
        os.mknod(target, kind | self.mode, os.makedev(self.major, self.minor))
        os.chmod(target, self.mode)  # mknod's mode is cut by the umask
        if self.uid is not None and self.gid is not None:
            os.chown(target, self.uid, self.gid)

    def shell(self, root: str) -> str:
        if self.bind:
            return f"touch {quote(root + self.path)} && mount --bind {quote(self.path)} {quote(root + self.path)}"
        return f"mknod -m {self.mode:o} {quote(root + self.path)} {self.kind} {self.major} {self.minor}"


class PivotRoot(Step):
    """Make the new root the process's / and detach the old one (pivot_root(2), "pivot_root(".", ".")")."""

    __slots__ = ()

    what = "pivot_root"

    def apply(self, root: str) -> None:
        os.chdir(root)
        _libc.pivot_root(".", ".")
        # The old root now sits on top of "."; detaching it leaves no path back to the host.
        _libc.umount2(".", _libc.MNT_DETACH)
        os.chdir("/")

    def shell(self, root: str) -> str:
        return f"cd {quote(root)} && pivot_root . . && umount -l . && cd /"


class Chroot(Step):
    """chroot(2) only: the host's mounts stay in this namespace and the root can be escaped."""

    __slots__ = ()

    what = "chroot"

    def apply(self, root: str) -> None:
        os.chroot(root)
        os.chdir("/")

    def shell(self, root: str) -> str:
        return f"chroot {quote(root)}"


class RemountRootReadOnly(Step):
    __slots__ = ()

    what = "read-only remount of /"

    def apply(self, root: str) -> None:
        # Keep nosuid/nodev/noexec/atime flags: in a user namespace they are locked, and a
        # remount that drops them fails with EPERM (mount_namespaces(7)).
        kept = os.statvfs("/").f_flag & _KEEP_ON_REMOUNT
        _libc.mount(None, "/", None, _libc.MS_REMOUNT | _libc.MS_BIND | _libc.MS_RDONLY | kept)

    def shell(self, root: str) -> str:
        return "mount -o remount,bind,ro /"


class RemountReadOnly(Step):
    """Make a path read-only: a mount point once what it holds was mounted (/sys/fs/cgroup's
    tmpfs), or with ``bind`` any path, bound onto itself first (OCI ``linux.readonlyPaths``).

    ``after_pivot``: the step runs once the new root is / (the OCI front end's masked and
    read-only paths); ``missing_ok``: a path this kernel or image lacks is skipped.
    """

    __slots__ = ("path", "bind", "after_pivot", "missing_ok")
    what = "read-only remount"

    def __init__(self, path: str, bind: bool = False, after_pivot: bool = False, missing_ok: bool = False) -> None:
        self.path = path
        self.bind = bind
        self.after_pivot = after_pivot
        self.missing_ok = missing_ok

    def apply(self, root: str) -> None:
        try:
            target = resolve_in_root("/" if self.after_pivot else root, self.path)
        except FileNotFoundError:
            if self.missing_ok:
                return
            raise
        if self.bind:
            _libc.mount(target, target, None, _libc.MS_BIND | _libc.MS_REC)
        flags = os.statvfs(target).f_flag & _KEEP_ON_REMOUNT
        _libc.mount(None, target, None, _libc.MS_REMOUNT | _libc.MS_BIND | _libc.MS_RDONLY | flags)

    def shell(self, root: str) -> str:
        target = quote(self.path if self.after_pivot else root + self.path)
        bind = f"mount --bind {target} {target} && " if self.bind else ""
        return f"{bind}mount -o remount,bind,ro {target}"


class SetHostname(Step):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    what = "sethostname"

    def apply(self, root: str) -> None:
        _libc.sethostname(self.name)

    def shell(self, root: str) -> str:
        return f"hostname {quote(self.name)}"


class LoopbackUp(Step):
    """Bring ``lo`` up in the new network namespace with SIOCSIFFLAGS, as ``ip link`` would."""

    __slots__ = ()

    what = "bringing up the loopback interface"

    def apply(self, root: str) -> None:
        _libc.set_interface_up("lo")

    def shell(self, root: str) -> str:
        return "ip link set lo up"


class Chdir(Step):
    __slots__ = ("path", "create")

    def __init__(self, path: str, create: bool = True) -> None:
        self.path = path
        self.create = create

    what = "chdir to the working directory"

    def apply(self, root: str) -> None:
        # Runs once "/" is the sandbox's root.  The path is resolved as chroot would, so a
        # magic link (/proc/self/fd/N: a descriptor this process still holds) is read as the
        # path it names, inside the root, and never makes a host directory the working
        # directory (CVE-2024-21626); nor is anything created through one.
        os.chdir(resolve_in_root("/", self.path, "dir" if self.create else None))
        try:
            os.getcwd()  # ENOENT when the working directory is not below the root
        except FileNotFoundError:
            raise OSError(f"the working directory {self.path} is outside the sandbox's root") from None

    def shell(self, root: str) -> str:
        return f"cd {quote(self.path)}"


class NoNewPrivs(Step):
    """PR_SET_NO_NEW_PRIVS: execve can no longer grant privileges (setuid bits, file caps)."""

    __slots__ = ()

    what = "setting no_new_privs"

    def apply(self, root: str) -> None:
        _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)

    def shell(self, root: str) -> str:
        return "setpriv --no-new-privs"


class SetUser(Step):
    __slots__ = ("uid", "gid", "groups")

    def __init__(self, uid: int, gid: int, groups: list[int] | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups if groups is not None else []

    what = "switching user"

    def apply(self, root: str) -> None:
        os.setgroups(self.groups)
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)

    def shell(self, root: str) -> str:
        groups = ",".join(map(str, self.groups)) or "-"
        return (
            f"setpriv --reuid {self.uid} --regid {self.gid} --groups {groups}"
            if self.groups
            else (f"setpriv --reuid {self.uid} --regid {self.gid} --clear-groups")
        )


class JoinCgroup(Step):
    """The child moves itself into its cgroups ("0" means the writer), before it runs anything."""

    __slots__ = ("files",)
    what = "joining the cgroup"

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def apply(self, root: str) -> None:
        for path in self.files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def shell(self, root: str) -> str:
        return " && ".join(f"echo $$ > {quote(path)}" for path in self.files)


class AwaitCgroup(Step):
    """Wait for the parent, which makes the sandbox's cgroup while this child builds the root.

    Creating the cgroup and writing its limits (about 0.5 ms) then overlaps the first
    mounts instead of delaying the clone.  ``fd`` is the read end of a pipe the parent
    closes when the cgroup is ready (end-of-file); if making it fails, the parent kills
    the child instead.  The child still joins by itself (see JoinCgroup's files).
    """

    __slots__ = ("fd",)
    what = "waiting for the sandbox's cgroup"

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd  # set by spawn.launch for each run

    def apply(self, root: str) -> None:
        if self.fd >= 0:
            os.read(self.fd, 1)

    def shell(self, root: str) -> str:
        return "# wait until the parent has made the cgroup (the mkdir and echo lines above)"


class UnshareCgroupNamespace(Step):
    """After joining: the sandbox's cgroup becomes the root of what it sees (cgroup_namespaces(7))."""

    __slots__ = ()
    what = "unshare(CLONE_NEWCGROUP)"

    def apply(self, root: str) -> None:
        _libc.unshare(_libc.CLONE_NEWCGROUP)

    def shell(self, root: str) -> str:
        return "unshare --cgroup"


class Plan:
    """Everything needed to start one sandbox: namespaces to create, steps, and the command."""

    __slots__ = (
        "sandbox_id",
        "clone_flags",
        "stage_dir",
        "root",
        "steps",
        "argv",
        "env",
        "new_pid_ns",
        "keep_dirs",
        "work_dir_to_remove",
        "upper_dir",
        "cgroup_version",
        "cgroup_dirs",
        "cgroup_parent",
        "limits",
        "share_pid",
        "state_dir",
        "layer_locks",
        "init",
        "workdir",
        "user",
        "tty",
        "userns",
        "parent_joins",
        "trace_fd",
        "spare_fd",
        "template",
    )

    def __init__(
        self,
        sandbox_id: str,
        clone_flags: int,
        stage_dir: str,
        root: str,
        steps: list[Step],
        argv: list[str],
        env: dict[str, str],
        new_pid_ns: bool,
        keep_dirs: list[str] | None = None,
        work_dir_to_remove: str | None = None,
        upper_dir: str | None = None,
        cgroup_version: str | None = None,
        cgroup_dirs: dict[str, str] | None = None,
        cgroup_parent: str = "",
        limits: Any = None,
        share_pid: bool = False,
        state_dir: str = "/run/isolate",
        layer_locks: list[str] | None = None,
        init: bool = False,
        workdir: str = "/",
        user: tuple[int, int] | None = None,
        tty: bool = False,
        userns: list[tuple[int, int, int]] | None = None,
        parent_joins: list[str] | None = None,
        trace_fd: int = -1,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.clone_flags = clone_flags
        self.stage_dir = stage_dir  # host directory where the sandbox's private tmpfs is mounted
        self.root = root  # host path of the new root before pivot_root / chroot
        self.steps = steps
        self.argv = argv
        self.env = env
        self.new_pid_ns = new_pid_ns
        self.keep_dirs = keep_dirs if keep_dirs is not None else []  # host dirs made for --keep (upper, work)
        self.work_dir_to_remove = work_dir_to_remove
        self.upper_dir = upper_dir
        self.cgroup_version = cgroup_version  # "v1", "v2" or None: no cgroup for this run
        self.cgroup_dirs = cgroup_dirs or {}
        self.cgroup_parent = cgroup_parent
        self.limits = limits  # isolate.limits.Limits
        self.share_pid = share_pid
        self.state_dir = state_dir
        self.layer_locks = layer_locks or []  # image layers in use: held shared for the sandbox's life
        self.init = init  # PID 1 is isolate's init (reaps, forwards signals), the command is PID 2
        self.workdir = workdir  # what the command starts in (for `isolate exec` too)
        self.user = user
        self.tty = tty  # stdio is a pty: the child makes it its controlling terminal
        self.userns = userns  # (inside, outside, count) id map lines of a user namespace
        self.parent_joins = parent_joins or []  # cgroup files the parent writes the child's pid to
        self.trace_fd = trace_fd  # each step executed is written here as shell (ISOLATE_TRACE)
        self.spare_fd = -1  # a spare's socket: the run's command and stdio come from it (supervisor.Spare)
        self.template: Template | None = None  # the Template this plan was made from (with_identity), in the caller

    def identity(self) -> tuple[str, dict[str, str], list[str]]:
        """What tells this plan from another run's of the same configuration: the sandbox id,
        its cgroup directories and the cgroup files the child joins (see with_identity)."""
        joins = [step.files for step in self.steps if isinstance(step, JoinCgroup)]
        return self.sandbox_id, self.cgroup_dirs, joins[0] if joins else []

    def with_identity(self, identity: tuple[str, dict[str, str], list[str]]) -> Plan:
        """This plan for another run of the same configuration, as build_plan would make it.

        Two such plans differ only in what ``identity`` holds, and in the hostname when it
        is the sandbox id.  The copy shares the steps that never change (they are not
        written to once built); the ones that do differ, or that a start writes to
        (AwaitCgroup's pipe), are its own.  A plan with directories or id maps made for
        its run (--keep, a user namespace) cannot be copied so.
        """
        if self.keep_dirs or self.userns or self.parent_joins:
            raise ValueError("this plan's directories or id maps are its run's own")
        sandbox_id, cgroup_dirs, join_files = identity
        old = self.sandbox_id
        plan = Plan.__new__(Plan)
        for name in Plan.__slots__:
            setattr(plan, name, getattr(self, name))
        plan.sandbox_id = sandbox_id
        plan.cgroup_dirs = cgroup_dirs
        steps: list[Step] = []
        for step in self.steps:
            if isinstance(step, JoinCgroup):
                step = JoinCgroup(join_files)
            elif isinstance(step, AwaitCgroup):
                step = AwaitCgroup()
            elif isinstance(step, SetHostname) and step.name == old:
                step = SetHostname(sandbox_id)
            steps.append(step)
        plan.steps = steps
        plan.argv = list(self.argv)
        if self.env.get("HOSTNAME") == old:
            plan.env = {**self.env, "HOSTNAME": sandbox_id}
        return plan

    def shell(self) -> list[str]:
        """The steps as shell commands, in order, for ``--explain``."""
        flags = [
            (f, n)
            for f, n in [
                (_libc.CLONE_NEWPID, "--pid --fork"),
                (_libc.CLONE_NEWNS, "--mount"),
                (_libc.CLONE_NEWUTS, "--uts"),
                (_libc.CLONE_NEWIPC, "--ipc"),
                (_libc.CLONE_NEWNET, "--net"),
                (_libc.CLONE_NEWCGROUP, "--cgroup"),
            ]
            if self.clone_flags & f
        ]
        if self.clone_flags & _libc.CLONE_NEWUSER:
            flags.insert(0, (_libc.CLONE_NEWUSER, "--user"))
        lines = ["unshare " + " ".join(n for _, n in flags)]
        lines += [s.shell(self.root) for s in self.steps]
        lines.append("exec " + " ".join(quote(a) for a in self.argv))
        return lines


class Template:
    """A plan kept to make the plans of the next runs of one configuration (next_plan).

    Building a plan costs about 0.15 ms here, sending it whole to the zygote a pickle, and
    unpickling it in each freshly cloned child about 0.5 ms of page faults (its objects land
    in memory shared with the zygote).  The zygote keeps its own copy of a template by
    ``token`` instead, and a run sends only its identity (Plan.identity).
    """

    __slots__ = ("plan", "key", "made", "token")
    _tokens = iter(range(1, 1 << 62))

    def __init__(self, plan: Plan, key: str, made: float) -> None:
        self.plan = plan
        self.key = key  # the configuration it was built for (repr of its __dict__: Sandbox._prestart)
        self.made = made  # time.monotonic() when built: an old template is built again
        self.token = next(Template._tokens)  # unique in this process: what names it to the zygote


def quote(text: str) -> str:
    """``text`` as one shell word, for a step's shell form (--explain)."""
    import shlex

    return shlex.quote(text)
