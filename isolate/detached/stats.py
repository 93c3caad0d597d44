"""Live numbers of a running sandbox: its cgroup's counters, and psutil for each process."""

from __future__ import annotations

import os
import time

from isolate.cgroups import Cgroup, open_cgroup
from isolate.cgroups.base import read, read_keyed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _group(record: dict[str, Any]) -> Cgroup | None:
    dirs = record.get("cgroup_dirs") or {}
    if not dirs:
        return None
    return open_cgroup(str(record.get("cgroup_version")), {k: str(v) for k, v in dirs.items()})


def memory_current(record: dict[str, Any]) -> int | None:
    group = _group(record)
    try:
        return group.memory_current() if group is not None else None
    except OSError:
        return None


def _pids_and_io(record: dict[str, Any]) -> tuple[list[int], int, int, int]:
    """(pids in the group, pids.current, bytes read, bytes written)."""
    dirs = {k: str(v) for k, v in (record.get("cgroup_dirs") or {}).items()}
    procs_dir = dirs.get("unified") or dirs.get("pids") or dirs.get("memory") or ""
    pids = [int(p) for p in read(os.path.join(procs_dir, "cgroup.procs")).split()] if procs_dir else []
    current = len(pids)
    pids_dir = dirs.get("unified") or dirs.get("pids")
    if pids_dir:
        try:
            current = int(read(os.path.join(pids_dir, "pids.current")))
        except (OSError, ValueError):
            pass
    rbytes = wbytes = 0
    if "unified" in dirs:  # io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. ..." per device
        try:
            for line in read(os.path.join(dirs["unified"], "io.stat")).splitlines():
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                rbytes += int(fields.get("rbytes", 0))
                wbytes += int(fields.get("wbytes", 0))
        except OSError:
            pass
    elif "blkio" in dirs:
        totals = read_keyed(os.path.join(dirs["blkio"], "blkio.throttle.io_service_bytes"))
        rbytes, wbytes = totals.get("Read", 0), totals.get("Write", 0)
    return pids, current, rbytes, wbytes


def sample(record: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """One reading; with the previous one, CPU use as a percentage of one CPU over the interval."""
    import psutil

    group = _group(record)
    now = time.monotonic()
    cpu = group.cpu_usage() if group is not None else 0.0
    pids, current, rbytes, wbytes = _pids_and_io(record)
    processes = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            processes.append({"pid": pid, "rss": proc.memory_info().rss, "cmdline": " ".join(proc.cmdline())})
        except psutil.Error:
            pass
    stats = group.stats() if group is not None else None
    cpu_percent = None
    if previous is not None and now > previous["at"]:
        cpu_percent = 100 * (cpu - previous["cpu_seconds"]) / (now - previous["at"])
    return {
        "at": now,
        "memory": (group.memory_current() if group is not None else 0) or 0,
        "memory_peak": (stats.memory_peak if stats is not None else 0) or 0,
        "cpu_seconds": cpu,
        "cpu_percent": cpu_percent,
        "pids": current,
        "io_read": rbytes,
        "io_write": wbytes,
        "processes": processes,
    }
