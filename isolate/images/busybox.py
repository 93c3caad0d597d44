"""A busybox root filesystem made from the host's static busybox: the image that needs no
download (``isolate image build-busybox``, the tests' and the benchmarks' root)."""

from __future__ import annotations

import os

from isolate.errors import ConfigError, HostSupportError


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
