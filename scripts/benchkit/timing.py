"""Timing primitives shared by the driver and its workers: posix_spawn + waitpid under perf_counter."""

from __future__ import annotations

import os
import signal
import statistics
import time
from typing import Any

RUN_TIMEOUT = 60  # seconds for one start of one contender before it counts as hung


class RunTimeout(Exception):
    pass


def on_alarm(_sig: int, _frame: object) -> None:
    raise RunTimeout()


def devnull_actions(errfd: int) -> list[tuple[int, int, int]]:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # kept open for the process lifetime
    return [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, errfd, 2)]


def timed_spawn(
    path: str, argv: list[str], env: dict[str, str], actions: list[tuple[int, int, int]]
) -> tuple[float, int | None]:
    """Start argv with posix_spawn, wait for it; (milliseconds, exit code or None when it hung)."""
    signal.alarm(RUN_TIMEOUT)  # armed outside the timed window
    pid = 0
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(path, argv, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        t1 = time.perf_counter()
    except RunTimeout:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return RUN_TIMEOUT * 1e3, None
    finally:
        signal.alarm(0)
    return (t1 - t0) * 1e3, os.waitstatus_to_exitcode(status)


def stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {}
    s = sorted(samples)
    p90 = statistics.quantiles(s, n=10, method="inclusive")[-1] if len(s) > 1 else s[0]
    return {
        "n": len(s),
        "min": s[0],
        "median": statistics.median(s),
        "p90": p90,
        "max": s[-1],
        "mean": statistics.fmean(s),
        "stdev": statistics.stdev(s) if len(s) > 1 else 0.0,
    }
