"""The cgroup limits every cgroup-using contender runs with, so that all of them do the same work."""

from __future__ import annotations

MIB = 1 << 20


# The limits every cgroup-using contender runs with (crun's and runc's config.json, isolate's Limits).
LIMIT_MEMORY_MIB, LIMIT_PIDS, LIMIT_CPUS = 64, 32, 0.5


ISOLATE_LIMIT_FLAGS = ["--memory", f"{LIMIT_MEMORY_MIB}M", "--pids", str(LIMIT_PIDS), "--cpus", str(LIMIT_CPUS)]
