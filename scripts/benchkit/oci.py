"""The OCI config crun and runc are given: `runc spec`'s defaults with this run's root, command and limits."""

from __future__ import annotations

from typing import Any

from benchkit.limits import LIMIT_CPUS, LIMIT_MEMORY_MIB, LIMIT_PIDS, MIB

# What `runc spec` (1.1.5, Debian 12) writes besides the process: the mounts, masked and
# read-only paths a runc user gets by default.  isolate's default sandbox does the same work
# (its /proc masks, read-only /proc dirs, mqueue and cgroup mounts), so runc and crun get it
# too; without it they would be timed doing less than isolate does.
RUNC_SPEC_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
]


RUNC_SPEC_MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]


RUNC_SPEC_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def oci_config(rootfs: str, cgroups_path: str, args: list[str] | None = None) -> dict[str, Any]:
    """`runc spec`'s default config with this run's root, command, hostname, limits and cgroup."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["/bin/true"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": "bench",
        "mounts": RUNC_SPEC_MOUNTS,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": LIMIT_MEMORY_MIB * MIB},
                "pids": {"limit": LIMIT_PIDS},
                "cpu": {"quota": int(LIMIT_CPUS * 100000), "period": 100000},
            },
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": RUNC_SPEC_MASKED,
            "readonlyPaths": RUNC_SPEC_READONLY,
        },
    }
