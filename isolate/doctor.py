"""``isolate doctor``: what this host allows, and how to fix what it does not."""

from __future__ import annotations

import json
import os
import time


class Check:
    __slots__ = ("name", "ok", "detail", "fix", "required")

    def __init__(self, name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> None:
        self.name = name
        self.ok = ok
        self.detail = detail
        self.fix = fix
        self.required = required


def cgroup_layout() -> tuple[str, dict[str, str]]:
    """("v2" | "v1" | "hybrid" | "none", {controller: mount point}) from /proc/self/mountinfo."""
    v1: dict[str, str] = {}
    v2_mount = ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            point = left.split()[4]
            if fstype == "cgroup2":
                v2_mount = point
            elif fstype == "cgroup":
                for opt in options.split(","):
                    if opt in ("rw", "ro") or opt.startswith("name="):
                        continue
                    v1[opt] = point
    controllers: dict[str, str] = dict(v1)
    if v2_mount:
        try:
            with open(os.path.join(v2_mount, "cgroup.controllers")) as f:
                for name in f.read().split():
                    controllers.setdefault(name, v2_mount)
        except OSError:
            pass
    if v1 and v2_mount:
        return "hybrid", controllers
    if v2_mount:
        return "v2", controllers
    return ("v1" if v1 else "none"), controllers


def run_checks() -> list[Check]:
    checks = [
        Check(
            "root",
            os.geteuid() == 0,
            f"euid {os.geteuid()}",
            "run as root (sudo isolate ...); rootless runs need user namespaces",
        )
    ]
    release = os.uname().release
    major, minor = (int(x) for x in release.split(".")[:2])
    checks.append(Check("kernel", (major, minor) >= (5, 3), release, "isolate needs Linux 5.3 or newer (pidfd_open)"))
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        checks.append(
            Check(
                f"{ns} namespace",
                os.path.exists(f"/proc/self/ns/{ns}"),
                "available",
                f"enable CONFIG_{'MNT' if ns == 'mnt' else ns.upper()}_NS in the kernel",
            )
        )
    with open("/proc/filesystems") as f:
        fs = f.read().split()
    checks.append(
        Check(
            "overlayfs",
            "overlay" in fs,
            "registered" if "overlay" in fs else "missing",
            "load the overlay module (modprobe overlay) or enable CONFIG_OVERLAY_FS",
        )
    )
    userns = _read("/proc/sys/user/max_user_namespaces")
    checks.append(
        Check(
            "user namespaces",
            userns not in ("", "0"),
            f"max_user_namespaces={userns or '?'}",
            "sysctl user.max_user_namespaces=15000 (needed for rootless runs only)",
            required=False,
        )
    )
    layout, controllers = cgroup_layout()
    wanted = ["cpu", "memory", "pids", "cpuset"]
    missing = [c for c in wanted if c not in controllers]
    detail = f"{layout}; controllers: " + ", ".join(f"{c} ({controllers[c]})" for c in wanted if c in controllers)
    checks.append(
        Check(
            "cgroups",
            layout != "none" and not missing,
            detail,
            f"controllers not available: {', '.join(missing)}" if missing else "mount cgroup2 at /sys/fs/cgroup",
            required=False,
        )
    )
    busybox = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), "")
    checks.append(
        Check(
            "busybox",
            bool(busybox),
            busybox or "not installed",
            "apt-get install busybox-static (for busybox roots; the host image needs nothing)",
            required=False,
        )
    )
    if all(c.ok for c in checks if c.required):
        checks.append(_try_sandbox())
    return checks


def _try_sandbox() -> Check:
    from . import Sandbox
    from .errors import IsolateError

    try:
        start = time.perf_counter()
        result = Sandbox().run(["/bin/sh", "-c", "test $$ = 1"], capture=True)
        took = (time.perf_counter() - start) * 1000
    except IsolateError as exc:
        return Check("sandbox", False, str(exc), "see the message; isolate doctor lists the other checks")
    return Check(
        "sandbox",
        result.ok,
        f"host image, pid 1 inside, {took:.1f} ms",
        (result.stderr or b"").decode(errors="replace").strip(),
    )


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def print_report(checks: list[Check], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{s: getattr(c, s) for s in Check.__slots__} for c in checks], indent=2))
        return
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        line = f"[{mark}] {c.name}: {c.detail}"
        if not c.ok and c.fix:
            line += f"\n       fix: {c.fix}"
        print(line)
