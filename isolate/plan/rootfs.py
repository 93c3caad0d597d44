"""Root filesystems: the built-in host image, and a busybox root built from busybox-static.

The host image is what bubblewrap users assemble by hand: the host's /usr (and /bin, /lib
... which are symlinks into it on merged-/usr systems) and a few essential /etc files,
bind-mounted read-only on top of an empty skeleton.  It needs no download and runs any
program the host has; only the skeleton is writable, through the overlay's upper layer.
"""

from __future__ import annotations

import os

from isolate import _libc as L
from isolate.errors import ConfigError, HostSupportError
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


def find_busybox() -> str:
    """The statically linked busybox (Debian's busybox-static puts it at /bin/busybox)."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    raise HostSupportError("busybox not found: install it (apt-get install busybox-static)")


def build_busybox_rootfs(dest: str, busybox: str | None = None) -> str:
    """Make a minimal root filesystem in ``dest``: busybox, its applet links, and a few /etc files.

    The applet links point to /bin/busybox inside the root (``busybox --install`` run from
    the host would point them at the host's path).
    """
    import shutil
    import subprocess

    busybox = busybox or find_busybox()
    out = subprocess.run(["ldd", busybox], capture_output=True, text=True)
    if "not a dynamic executable" not in out.stdout + out.stderr and "statically linked" not in out.stdout:
        raise HostSupportError(f"{busybox} is dynamically linked; install busybox-static")
    if os.path.exists(dest) and os.listdir(dest):
        raise ConfigError(f"{dest}: exists and is not empty; choose a new directory")
    for name in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/tmp"):
        os.makedirs(os.path.join(dest, name), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(dest, "bin/busybox"))
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    for rel in applets.split():
        link = os.path.join(dest, rel)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    with open(os.path.join(dest, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(dest, "etc/group"), "w") as f:
        f.write("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    return dest
