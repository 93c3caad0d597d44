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
    checks.append(_cgroup_check())
    checks += _defence_checks()
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
    from isolate import Sandbox
    from isolate.errors import IsolateError

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


def _cgroup_check() -> Check:
    from isolate import cgroups

    lay = cgroups.layout()
    backend = cgroups.backend(lay)
    if backend is None:
        return Check("cgroups", False, f"layout {lay.kind}: no usable hierarchy; runs have no limits or accounting",
                     "mount cgroup2: mount -t cgroup2 none /sys/fs/cgroup", required=False)  # fmt: skip
    version = backend.version
    usable = sorted(backend.available())
    v1_roots = sorted({os.path.dirname(m) for m in lay.v1_mounts.values()})
    where = lay.v2_mount if version == "v2" else "a hierarchy per controller under " + ", ".join(v1_roots)
    detail = f"layout {lay.kind}, isolate uses {version} ({where}); controllers: {' '.join(usable)}"
    if lay.kind == "hybrid":
        detail += f"; the cgroup2 mount at {lay.v2_mount} has only: {' '.join(sorted(lay.v2_controllers)) or 'none'}"
    missing = [c for c in ("memory", "cpu", "pids", "cpuset") if c not in usable]
    fix = f"not available: {', '.join(missing)} (limits on them will be refused)" if missing else ""
    return Check("cgroups", not missing, detail, fix, required=False)


def _defence_checks() -> list[Check]:
    """Which of the default defences this host can give (security.py, seccomp.py)."""
    from isolate.plan.security import CAPS, DEFAULT_CAPS

    checks = []
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    bounding = int(status.get("CapBnd", "0"), 16)
    missing = [name for i, name in enumerate(CAPS) if not bounding & (1 << i)]
    default_missing = sorted(set(missing) & DEFAULT_CAPS)
    detail = "kept by default: " + ", ".join(sorted(DEFAULT_CAPS))
    if missing:
        detail += f"; this host withholds: {', '.join(missing)} (--privileged cannot give those)"
    checks.append(Check("capabilities", not default_missing, detail,
                        f"the default set needs {', '.join(default_missing)}", required=False))  # fmt: skip
    try:
        from isolate.config import default_state_dir
        from isolate.plan import seccomp

        path = seccomp.cached_program(default_state_dir(), seccomp.DEFAULT_PROFILE)
        checks.append(
            Check("seccomp", True, f"default filter compiled ({os.path.getsize(path) // 8} BPF instructions)")
        )
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks.append(Check("seccomp", False, str(exc), "apt-get install libseccomp2; pip install pyseccomp",
                            required=False))  # fmt: skip
    checks.append(
        Check("no_new_privs, masked /proc paths, read-only /sys", True, "on for every run (off with --privileged)")
    )
    return checks
