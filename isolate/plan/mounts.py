"""The sandbox's own /proc, /sys, /dev and /tmp, user tmpfs mounts and volumes.

Flags follow runc's defaults (libcontainer/specconv): kernel filesystems are nosuid,
nodev, noexec; /sys is read-only; /dev is a small tmpfs holding only the devices a
program expects, so no host disk or console is reachable.
"""

from __future__ import annotations

import os

from isolate import _libc as L
from isolate.config import Tmpfs, Volume
from isolate.errors import ConfigError
from isolate.plan.steps import MakeDevice, Mount, RemountReadOnly, Step, Symlink

_KERNEL_FS = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC

# name, major, minor: the set runc and docker create (devices.txt in the kernel docs).
DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
DEV_LINKS = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
]


def proc_steps() -> list[Step]:
    # Mounted from inside the new pid namespace, so it lists only the sandbox's processes.
    return [Mount("proc", "/proc", "proc", _KERNEL_FS)]


def sys_steps() -> list[Step]:
    return [Mount("sysfs", "/sys", "sysfs", _KERNEL_FS | L.MS_RDONLY)]


def dev_steps(own_ipc: bool, userns: bool = False, tty_group: bool = True) -> list[Step]:
    # /dev must not be nodev (its device nodes could not be opened) but is nosuid.
    steps: list[Step] = [Mount("tmpfs", "/dev", "tmpfs", L.MS_NOSUID | L.MS_STRICTATIME, "mode=755,size=65536k")]
    if userns:  # mknod is root's in the host's user namespace only: bind the host's nodes
        steps += [Mount(f"/dev/{name}", f"/dev/{name}", None, L.MS_BIND, create="file") for name, _, _ in DEVICES]
    else:
        steps += [MakeDevice(f"/dev/{name}", major, minor) for name, major, minor in DEVICES]
    steps += [Symlink(target, path) for target, path in DEV_LINKS]
    # newinstance: a devpts of our own, so the host's terminals are not listed in /dev/pts.
    steps.append(
        Mount(
            "devpts",
            "/dev/pts",
            "devpts",
            L.MS_NOSUID | L.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620" + (",gid=5" if tty_group else ""),
        )  # fmt: skip
    )
    steps.append(Mount("shm", "/dev/shm", "tmpfs", _KERNEL_FS, "mode=1777,size=65536k"))
    if own_ipc:
        steps.append(Mount("mqueue", "/dev/mqueue", "mqueue", _KERNEL_FS))
    return steps


def tmp_steps() -> list[Step]:
    return [Mount("tmpfs", "/tmp", "tmpfs", L.MS_NOSUID | L.MS_NODEV, "mode=1777")]


_TMPFS_FLAGS = {
    "ro": (L.MS_RDONLY, 0),
    "rw": (0, L.MS_RDONLY),
    "nosuid": (L.MS_NOSUID, 0),
    "suid": (0, L.MS_NOSUID),
    "nodev": (L.MS_NODEV, 0),
    "dev": (0, L.MS_NODEV),
    "noexec": (L.MS_NOEXEC, 0),
    "exec": (0, L.MS_NOEXEC),
}


def tmpfs_step(tmp: Tmpfs) -> Step:
    """``--tmpfs PATH[:OPTS]``: docker's defaults (nosuid, nodev, noexec, mode 1777), OPTS override."""
    flags = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    data = ["mode=1777"]
    for opt in filter(None, tmp.options.split(",")):
        if opt in _TMPFS_FLAGS:
            add, remove = _TMPFS_FLAGS[opt]
            flags = (flags | add) & ~remove
        elif opt.startswith(("size=", "mode=", "nr_inodes=", "uid=", "gid=")):
            data = [d for d in data if d.split("=")[0] != opt.split("=")[0]] + [opt]
        else:
            raise ConfigError(
                f"--tmpfs {tmp.target}:{tmp.options}: unknown option {opt!r} "
                "(use ro, rw, [no]exec, [no]suid, [no]dev, size=, mode=, uid=, gid=, nr_inodes=)"
            )
    return Mount("tmpfs", tmp.target, "tmpfs", flags, ",".join(data))


def volume_step(vol: Volume) -> Step:
    source = os.path.abspath(vol.source)
    create = "dir" if os.path.isdir(source) else "file"
    if vol.read_only:
        # Not recursive: a read-only remount covers only the top mount, so mounts below the
        # source would stay writable.  Leaving them out keeps ":ro" true.
        return Mount(source, vol.target, None, L.MS_BIND | L.MS_RDONLY, create=create)
    return Mount(source, vol.target, None, L.MS_BIND | L.MS_REC, create=create)


def cgroup_steps(version: str, dirs: dict[str, str]) -> list[Step]:
    """The sandbox's own cgroup, read-only at /sys/fs/cgroup, as docker shows it.

    Mounted after the child entered its cgroup namespace, so the root of what it sees is
    its own group: programs can read their limits (memory.max, cpu.max...), not the host's.
    """
    ro = _KERNEL_FS | L.MS_RDONLY
    if version == "v2":
        return [Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", ro)]
    from isolate.cgroups import layout

    options = layout().v1_options
    steps: list[Step] = [Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", _KERNEL_FS, "mode=755")]
    for point in sorted({os.path.dirname(d.rstrip("/")) for d in dirs.values()}):
        mount = _hierarchy_mount(point, options)
        if mount:
            steps.append(Mount("cgroup", f"/sys/fs/cgroup/{os.path.basename(mount)}", "cgroup", ro, options[mount]))
    steps.append(RemountReadOnly("/sys/fs/cgroup"))
    return steps


def _hierarchy_mount(parent_dir: str, options: dict[str, str]) -> str:
    # parent_dir is <mount point>/<cgroup parent>: find the mount point it lies under.
    for point in options:
        if parent_dir == point or parent_dir.startswith(point + "/"):
            return point
    return ""
