"""Root filesystems: the built-in host image, and a busybox root built from busybox-static.

The host image is what bubblewrap users assemble by hand: the host's /usr (and /bin, /lib
... which are symlinks into it on merged-/usr systems) and a few essential /etc files,
bind-mounted read-only on top of an empty skeleton.  It needs no download and runs any
program the host has; only the skeleton is writable, through the overlay's upper layer.
"""

from __future__ import annotations

import os

from isolate import _libc as L
from isolate.plan.steps import MakeDir, Mount, Step, Symlink

HOST_DIRS = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]
# What programs read from /etc to start and resolve names; not shadow, not ssh keys.
HOST_ETC = [
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "profile",
    "shells",
    "ssl",
    "ca-certificates",
    "mime.types",
    "protocols",
    "services",
    "inputrc",
    "bash.bashrc",
    "environment",
    "locale.alias",
    "python3",
    "python3.11",
]
SKELETON = [
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "etc",
    "root",
    "home",
    "mnt",
    "opt",
    "srv",
    "media",
    "var",
    "var/tmp",
    "var/log",
    "var/cache",
]


def host_skeleton_steps(skel: str) -> list[Step]:
    """An empty directory tree for the overlay's lower layer, mirroring the host's symlinks."""
    steps: list[Step] = [MakeDir(skel, 0o755, host_path=True)]
    for name in SKELETON:
        mode = 0o1777 if name in ("tmp", "var/tmp") else (0o700 if name == "root" else 0o755)
        steps.append(MakeDir(f"{skel}/{name}", mode, host_path=True))
    for name in HOST_DIRS:
        host = f"/{name}"
        if os.path.islink(host):
            steps.append(Symlink(os.readlink(host), f"{skel}/{name}", host_path=True))
        elif os.path.isdir(host):
            steps.append(MakeDir(f"{skel}/{name}", 0o755, host_path=True))
    return steps


def host_bind_steps() -> list[Step]:
    """Read-only binds of the host's directories and /etc essentials into the new root."""
    steps: list[Step] = []
    for name in HOST_DIRS:
        host = f"/{name}"
        if os.path.isdir(host) and not os.path.islink(host):
            steps.append(Mount(host, host, None, L.MS_BIND | L.MS_RDONLY))
    for name in HOST_ETC:
        host = f"/etc/{name}"
        if os.path.islink(host):
            steps.append(Symlink(os.readlink(host), host))
        elif os.path.exists(host):
            create = "dir" if os.path.isdir(host) else "file"
            steps.append(Mount(host, host, None, L.MS_BIND | L.MS_RDONLY, create=create))
    return steps
