"""The start-latency section: every contender once a round, in a shuffled order each round."""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from benchkit.contenders import Contender
from benchkit.procs import reap_orphans
from benchkit.timing import stats
from benchkit.workers import Worker, tail


def measure(contenders: list[Contender], runs: int, warmup: int, seed: int) -> None:
    rng = random.Random(seed)
    rounds = {c.name: {k * runs // c.runs for k in range(c.runs)} for c in contenders}
    total = warmup + runs
    started = time.monotonic()
    previous = ""
    tty = sys.stderr.isatty()
    workers = {w.proc.pid for c in contenders if isinstance(w := getattr(c, "worker", None), Worker)}
    for r in range(total):
        order = [c for c in contenders if c.error is None and (r < warmup or (r - warmup) in rounds[c.name])]
        rng.shuffle(order)
        for c in order:
            try:
                ms = c.once(r)
            except RuntimeError as e:
                c.error = str(e)
                print(f"\n  {c.name} failed: {e}\n{tail(getattr(c, 'log', ''))}", file=sys.stderr, flush=True)
                continue
            if r >= warmup:
                c.samples.append(ms)
                c.after.append(previous)
            previous = c.name
        reap_orphans(workers)  # outside the timed windows
        if tty:
            print(
                f"\r  round {r + 1}/{total} ({time.monotonic() - started:.0f} s)", end="", file=sys.stderr, flush=True
            )
    print(f"\r  {total} rounds in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def cgroup_warmth(contenders: list[Contender]) -> dict[str, Any]:
    """Medians of cgroup-creating contenders split by whether a cgroup-creating run came just before."""
    users = {c.name for c in contenders if c.uses_cgroups}
    out = {}
    for c in contenders:
        if not c.uses_cgroups:
            continue
        warm = [ms for ms, prev in zip(c.samples, c.after) if prev in users]
        cold = [ms for ms, prev in zip(c.samples, c.after) if prev not in users]
        if len(warm) >= 3 and len(cold) >= 3:
            out[c.name] = {"warm": stats(warm), "cold": stats(cold)}
    return out
