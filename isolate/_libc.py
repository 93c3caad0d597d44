"""Thin ctypes bindings for the syscalls isolate needs.

Only what the standard library lacks lives here: mount(2), umount2(2), pivot_root(2),
unshare(2), setns(2), prctl(2), sethostname(2), a fork-like clone(2), openat2(2) and
Landlock.  Every wrapper raises ``OSError`` with the errno the kernel returned, so callers
can tell EPERM from EINVAL the way the man pages do.
"""

from __future__ import annotations

import ctypes
import errno
import os

_MACHINE = os.uname().machine
_libc = ctypes.CDLL(None, use_errno=True)
# clone() must run with the GIL held: the child's copy of the interpreter then sees the GIL
# owned by the one thread that exists in it.  CDLL would release the GIL around the call and
# another thread could take it in the parent at the instant of the copy.
_libc_gil = ctypes.PyDLL(None, use_errno=True)

_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "armv7l": 120, "ppc64le": 120, "s390x": 120, "riscv64": 220}
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "armv7l": 218, "ppc64le": 203, "s390x": 217, "riscv64": 41}

# sched.h / linux/sched.h
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# sys/mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# sys/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.wait4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc_gil.syscall.restype = ctypes.c_long


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl")


_libc.setrlimit.argtypes = [ctypes.c_int, ctypes.c_void_p]


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2); -1 (resource.RLIM_INFINITY) is RLIM_INFINITY, all ones in an rlim_t."""
    limits = (ctypes.c_ulong * 2)(soft & 0xFFFFFFFFFFFFFFFF, hard & 0xFFFFFFFFFFFFFFFF)
    _check(_libc.setrlimit(resource, limits), "setrlimit")


def wait4(pid: int) -> tuple[int, float, float]:
    """wait4(2) for ``pid``: (wait status, user seconds, system seconds) of it and its reaped children.

    os.wait4 imports the resource module (an extension library: 0.3 ms of every CLI run) only
    to build its struct_rusage.  Interrupted by a signal, the wait is retried after Python's
    handler ran, as os.wait4 does (PEP 475); a handler's exception propagates.
    """
    status = ctypes.c_int()
    usage = (ctypes.c_long * 36)()  # struct rusage: two timevals and 14 longs (18 longs), with room
    while _libc.wait4(pid, ctypes.byref(status), 0, usage) < 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, f"wait4: {os.strerror(err)}")
    return status.value, usage[0] + usage[1] / 1e6, usage[2] + usage[3] / 1e6


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT[_MACHINE]
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root", new_root)


def clone_fork(flags: int, fork_hooks: bool = True) -> int:
    """fork(2) that also enters new namespaces: clone(flags | SIGCHLD) with no new stack.

    One syscall replaces fork + unshare + fork: the child is born inside the new pid
    namespace (as its PID 1), which unshare(CLONE_NEWPID) cannot do for the caller itself.
    Python's own fork bookkeeping (at-fork hooks, import lock, thread state) runs around it
    exactly as in os.fork().  Returns 0 in the child and the child's pid in the parent.

    ``fork_hooks=False`` skips that bookkeeping, which costs the child about 0.35 ms of CPU
    and 100 page faults here.  Only for a process that never ran a second thread (nothing
    to forget, no lock another thread could hold) and that has no Python signal handler
    (none can be caught but not yet run, which the child would then run): the zygote.
    """
    import _signal  # the C module: "import signal" pulls in enum, which is slow to import

    nr = _SYS_CLONE[_MACHINE]
    api = ctypes.pythonapi
    if fork_hooks:
        api.PyOS_BeforeFork()
    # Argument order differs by architecture, but with parent_tid/child_tid/tls all NULL
    # and a NULL stack (share the caller's, copy-on-write, exactly like fork) it does not matter.
    # Through PyDLL: the GIL stays held, so the child's copy of the interpreter is consistent.
    pid = _libc_gil.syscall(ctypes.c_long(nr), ctypes.c_ulong(flags | _signal.SIGCHLD), None, None, None, None)
    if pid == 0:
        if fork_hooks:
            api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    if fork_hooks:
        api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)


_SYS_CLOSE_RANGE = 436  # the same number on every architecture (asm-generic/unistd.h)
CLOSE_RANGE_CLOEXEC = 4


def close_range_cloexec(first: int) -> None:
    """Mark every descriptor >= ``first`` close-on-exec (close_range(2), Linux 5.11)."""
    ret = _libc.syscall(
        ctypes.c_long(_SYS_CLOSE_RANGE),
        ctypes.c_uint(first),
        ctypes.c_uint(0xFFFFFFFF),
        ctypes.c_uint(CLOSE_RANGE_CLOEXEC),
    )
    if ret < 0:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd >= first:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass


# openat2(2) (Linux 5.6) and Landlock (5.13): the same numbers on every architecture (asm-generic/unistd.h)
_SYS_OPENAT2 = 437
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_LANDLOCK_ACCESS_FS_EXECUTE = 1
_LANDLOCK_RULE_PATH_BENEATH = 1


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """openat2(2) of ``path`` with RESOLVE_IN_ROOT: every symlink and ".." is resolved as if
    ``root_fd`` were "/", by the kernel, in one step, so a component swapped for a symlink
    meanwhile cannot lead out of it; magic links (/proc/PID/fd/N) are refused.  Raises OSError;
    ENOSYS before Linux 5.6."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    ret = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), _b(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)))  # fmt: skip
    return _check(ret, "openat2", path)


def landlock_execute_beneath(dir_fd: int) -> bool:
    """Let this process and its descendants execve(2) only files beneath ``dir_fd`` (Landlock).

    False when the kernel has no Landlock (before 5.13, or not enabled at boot): nothing is
    restricted then.  Needs no_new_privs or CAP_SYS_ADMIN, as landlock_restrict_self(2) does."""
    handled = ctypes.c_uint64(_LANDLOCK_ACCESS_FS_EXECUTE)  # struct landlock_ruleset_attr, its first field
    ruleset = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(handled),
                            ctypes.c_size_t(8), ctypes.c_uint32(0))  # fmt: skip
    if ruleset < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        _check(ruleset, "landlock_create_ruleset")
    try:
        rule = _PathBeneath(_LANDLOCK_ACCESS_FS_EXECUTE, dir_fd)
        _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                             ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)),
               "landlock_add_rule")  # fmt: skip
        _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")  # fmt: skip
    finally:
        os.close(ruleset)
    return True


_libc.socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.close.argtypes = [ctypes.c_int]
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class _IfReq(ctypes.Structure):
    # struct ifreq (netdevice(7)): the name, then a union whose ifr_flags is a short.
    _fields_ = [("name", ctypes.c_char * 16), ("flags", ctypes.c_short), ("_pad", ctypes.c_char * 22)]


def set_interface_up(name: str) -> None:
    """``ip link set NAME up`` with two ioctls (the socket module costs ms to import)."""
    fd = _check(_libc.socket(2, 2 | 0o2000000, 0), "socket")  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
    try:
        req = _IfReq(name.encode())
        _check(_libc.ioctl(fd, _SIOCGIFFLAGS, ctypes.byref(req)), "ioctl(SIOCGIFFLAGS)", name)
        req.flags |= _IFF_UP
        _check(_libc.ioctl(fd, _SIOCSIFFLAGS, ctypes.byref(req)), "ioctl(SIOCSIFFLAGS)", name)
    finally:
        _libc.close(fd)


_PR_SET_NAME = 15


def prctl_set_name(name: bytes) -> None:
    """The thread's name (comm): what ps and top show for it."""
    buf = ctypes.create_string_buffer(name[:15])
    _check(_libc.prctl(_PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


# capabilities (capget(2)/capset(2), linux/capability.h); prctl bounding and ambient sets
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_V3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "armv7l": 185, "ppc64le": 184, "s390x": 185, "riscv64": 91}
_SYS_CAPGET = {"x86_64": 125, "aarch64": 90, "armv7l": 184, "ppc64le": 183, "s390x": 184, "riscv64": 90}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def cap_permitted() -> int:
    """This thread's permitted capability set as a 64-bit mask (capget(2))."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    nr = _SYS_CAPGET[_MACHINE]
    _check(_libc.syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data)), "capget")
    return int(data[0].permitted) | int(data[1].permitted) << 32


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks, version 3 of the ABI)."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    nr = _SYS_CAPSET[_MACHINE]
    _check(_libc.syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data)), "capset")
