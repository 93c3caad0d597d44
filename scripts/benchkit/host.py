"""Facts about the host (versions, memory, cgroup layout) and the leak checks run before and after."""

from __future__ import annotations

import fnmatch
import os
import platform
import subprocess

CGROUP_ROOT = "/sys/fs/cgroup"


LEAK_PATTERNS = ("*isolate*", "*bench*")


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    return 0.0


def os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return platform.system()
    return fields.get("PRETTY_NAME", "").strip('"') or platform.system()


def deb_versions(packages: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in packages:
        try:
            q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
            out[pkg] = q.stdout.strip() if q.returncode == 0 and q.stdout.strip() else None
        except OSError:
            out[pkg] = None
    return out


def git_describe(path: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except OSError:
        return "?"
    if rev.returncode != 0:
        return "?"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def memcg_count() -> int | None:
    """Memory cgroups the kernel holds, dying ones included (/proc/cgroups)."""
    try:
        with open("/proc/cgroups") as f:
            for line in f:
                words = line.split()
                if words and words[0] == "memory":
                    return int(words[2])
    except OSError:
        pass
    return None


def mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            out.append((left.split()[4].encode().decode("unicode_escape"), right.split()[0]))
    return out


def cgroup_layout() -> str:
    types = {mp: t for mp, t in mounts() if mp == CGROUP_ROOT or mp.startswith(CGROUP_ROOT + "/")}
    if types.get(CGROUP_ROOT) == "cgroup2":
        return "v2"
    v1 = any(t == "cgroup" for t in types.values())
    v2 = any(t == "cgroup2" for t in types.values())
    return "hybrid" if v1 and v2 else "v1" if v1 else "v2" if v2 else "none"


def cgroup_mounts() -> list[str]:
    return [mp for mp, t in mounts() if t in ("cgroup", "cgroup2")]


def tree_pids(parent: str) -> set[int]:
    """Every process in a cgroup below parent, in any hierarchy."""
    pids: set[int] = set()
    for mp in cgroup_mounts():
        for top, _, files in os.walk(os.path.join(mp, parent)):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(top, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    pass
    return pids


def memcg_usage(parent: str) -> int | None:
    for mp in cgroup_mounts():
        for name in ("memory.usage_in_bytes", "memory.current"):
            value = read_int(os.path.join(mp, parent, name))
            if value is not None:
                return value
    return None


def leak_cgroups() -> set[str]:
    """Like find /sys/fs/cgroup -mindepth 2 -type d \\( -name '*isolate*' -o -name '*bench*' \\)."""
    found = set()
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        depth = top[len(CGROUP_ROOT) :].count("/")
        for d in dirs:
            if depth + 1 >= 2 and any(fnmatch.fnmatch(d, p) for p in LEAK_PATTERNS):
                found.add(os.path.join(top, d))
    return found


def remove_cgroup_tree(path: str) -> list[str]:
    """rmdir path and what is below it, deepest first; returns what could not be removed."""
    failed = []
    for top, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        try:
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError as e:
            failed.append(f"{top}: {e.strerror}")
    return failed


def dir_entries(path: str) -> set[str]:
    try:
        return {os.path.join(top, n) for top, dirs, files in os.walk(path) for n in dirs + files}
    except OSError:
        return set()
