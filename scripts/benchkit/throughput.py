"""The throughput section: runs per second of Sandbox.run() in a loop, alone and from concurrent callers."""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from typing import Any

from benchkit.context import Context
from benchkit.oci import oci_config
from benchkit.workers import CrunSession, Worker, checked, lib_worker_argv


def loop_together(workers: list[Worker], seconds: float, prefix: str | None = None) -> dict[str, Any]:
    """Every worker runs its loop over the same window; aggregate runs per second."""
    begin = time.monotonic() + 0.3
    for i, w in enumerate(workers):
        w.send(f"loop {begin} {begin + seconds}" + (f" {prefix}-{i}" if prefix else ""))
    replies = [w.request(None) for w in workers]
    for r in replies:
        if r.get("failed"):
            raise RuntimeError(f"{r['failed']} of {r['runs']} runs in a loop failed")
    rate = sum(r["runs"] / r["elapsed"] for r in replies if r["elapsed"] > 0)
    lat = [r["median"] for r in replies]
    return {
        "callers": len(workers),
        "runs": sum(r["runs"] for r in replies),
        "runs_per_s": rate,
        "median_ms": statistics.median(lat),
        "min_ms": min(r["min"] for r in replies),
        "per_caller": replies,
    }


def run_throughput(ctx: Context, seconds: float, callers: list[int], rounds: int = 3, seed: int = 1) -> dict[str, Any]:
    """Sequential runs/s of Sandbox.run (plain, with crun's limits, and without prestart) and of crun run;
    then N concurrent callers of Sandbox.run, each its own process.  The speed-up over one caller is
    measured without prestart: one such caller keeps about one CPU busy (its CPU time per run is its
    wall time, measured), so the speed-up shows how callers scale with cores; with prestart, a single
    caller already keeps two busy."""
    rng = random.Random(seed)
    out: dict[str, Any] = {
        "seconds": seconds,
        "rounds": rounds,
        "nproc": len(os.sched_getaffinity(0)),
        "callers": {},
        "sequential": {},
        "callers_prestart": {},
    }
    workers: list[Worker] = []
    crun: CrunSession | None = None
    log = os.path.join(ctx.tmp, "throughput.log")
    try:
        for _ in range(max(callers)):
            workers.append(Worker(lib_worker_argv(ctx, limits=False), log))
        for _ in range(max(callers)):
            workers.append(Worker(lib_worker_argv(ctx, limits=False, prestart=False), log))
        limited = Worker(lib_worker_argv(ctx, limits=True), log)
        workers.append(limited)
        for w in workers:  # warm: imports done, first-run costs paid, outside the timed windows
            for _ in range(3):
                checked(w.request("run"), "isolate warm-up run")
        plain, cold = workers[: max(callers)], workers[max(callers) : 2 * max(callers)]
        crun = CrunSession(ctx, "crun-loop", oci_config(ctx.rootfs, f"/{ctx.cgroup_parent}/crun-loop"))
        for i in range(3):
            checked(crun.worker.request(f"run {ctx.cgroup_parent}-crun-warm-{i}"), "crun warm-up run")
        print(
            f"  sequential, {rounds} round(s) of {seconds:g} s each: isolate, with limits, without prestart; crun",
            file=sys.stderr,
            flush=True,
        )
        # One window each would time the host's drift over the seconds between them (this
        # machine's runs/s swing by 20 % from one window to the next): the contenders' windows
        # take turns, in a shuffled order each round, and each reports its median window.
        seq: dict[str, tuple[list[Worker], str | None]] = {
            "isolate-lib": (plain[:1], None),
            "isolate-lib-limits": ([limited], None),
            "isolate-lib-cold": (cold[:1], None),
            "crun": ([crun.worker], f"{ctx.cgroup_parent}-crun-loop"),
        }
        windows: dict[str, list[dict[str, Any]]] = {key: [] for key in seq}
        for r in range(rounds):
            order = list(seq)
            rng.shuffle(order)
            for key in order:
                ws, prefix = seq[key]
                windows[key].append(loop_together(ws, seconds, f"{prefix}{r}" if prefix else None))
        for key, rows in windows.items():
            row = sorted(rows, key=lambda x: x["runs_per_s"])[(len(rows) - 1) // 2]
            row["windows_runs_per_s"] = [x["runs_per_s"] for x in rows]
            out["sequential"][key] = row
        for n in callers:
            print(f"  {n} concurrent caller(s), {seconds:g} s", file=sys.stderr, flush=True)
            out["callers"][str(n)] = loop_together(cold[:n], seconds)
        top = max(callers)
        print(f"  {top} concurrent caller(s) with prestart, {seconds:g} s", file=sys.stderr, flush=True)
        out["callers_prestart"][str(top)] = loop_together(plain[:top], seconds)
        one = out["callers"].get("1", out["sequential"]["isolate-lib-cold"])["runs_per_s"]
        for row in out["callers"].values():
            row["speedup"] = row["runs_per_s"] / one if one else None
        crun_rate = out["sequential"]["crun"]["runs_per_s"]
        for row in out["sequential"].values():
            row["ratio_to_crun"] = row["runs_per_s"] / crun_rate if crun_rate else None
    finally:
        for w in workers:
            w.close()
        if crun is not None:
            left = crun.close()
            if left:
                out["leftover_containers"] = left
    return out
