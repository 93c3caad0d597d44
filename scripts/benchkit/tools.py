"""The external commands the contenders need: found on PATH, else installed with apt-get."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys

PACKAGES = {"runc": "runc", "crun": "crun", "bwrap": "bubblewrap", "hyperfine": "hyperfine"}


NEEDS = {
    "runc": ["runc"],
    "crun": ["crun", "unshare"],
    "bwrap": ["bwrap"],
    "unshare": ["unshare", "chroot"],
    "throughput": ["crun", "unshare"],
    "detached": ["crun", "unshare", "runc"],
}


def is_static_elf(path: str) -> bool:
    """True when path is an ELF file without a PT_INTERP header (statically linked)."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if ident[:4] != b"\x7fELF":
                return False
            is64, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
            if is64:
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            else:
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from(end + "I", table, k * phentsize)[0] != 3 for k in range(phnum))


def find_busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and is_static_elf(path):
            return path
    return None


def apt_install(pkgs: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing: apt-get install -y {' '.join(pkgs)}", flush=True)
    if subprocess.run(["apt-get", "install", "-y", *pkgs], env=env).returncode == 0:
        return
    print("apt-get install failed; running apt-get update and retrying", flush=True)
    subprocess.run(["apt-get", "update"], env=env, check=False)
    if subprocess.run(["apt-get", "install", "-y", *pkgs], env=env).returncode != 0:
        sys.exit(f"bench: could not install {' '.join(pkgs)}")


def ensure_tools(selected: list[str], need_busybox: bool) -> dict[str, str]:
    wanted = {"hyperfine"} | {tool for name in selected for tool in NEEDS.get(name, [])}
    missing = sorted({PACKAGES[t] for t in wanted if t in PACKAGES and not shutil.which(t)})
    if need_busybox and not find_busybox():
        missing.append("busybox-static")
    if missing:
        apt_install(missing)
    which = {}
    for tool in sorted(wanted):
        path = shutil.which(tool)
        if not path and tool != "hyperfine":
            sys.exit(f"bench: {tool} not found on PATH")
        which[tool] = path or ""
    return which


def find_isolate_bin(given: str | None) -> str:
    if given:
        return given
    beside = os.path.join(os.path.dirname(sys.executable), "isolate")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("isolate")
    if not found:
        sys.exit("bench: the isolate command was not found; pass --isolate-bin PATH")
    return found


def find_lib_python(isolate_bin: str) -> str:
    """This interpreter when it can import isolate, else the one in the isolate script's shebang."""
    if importlib.util.find_spec("isolate") is not None:
        return sys.executable
    try:
        with open(isolate_bin, "rb") as f:
            line = f.readline().decode(errors="replace")
    except OSError:
        line = ""
    if line.startswith("#!"):
        interp = line[2:].split()[0] if line[2:].split() else ""
        if os.access(interp, os.X_OK):
            return interp
    return sys.executable
