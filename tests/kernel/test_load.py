"""Load (issue 17): many library runs, in sequence and from threads; many concurrent CLI runs; many
detached sandboxes with an exec storm against them and a stream of starts through the monitor.
Every result is checked (exit status and output), nothing may be left, and the monitor's memory
stays flat.

Counts come from the environment: CI runs the short form (the defaults below);
scripts/reliability runs the issue's numbers (``ISOLATE_LOAD=long``), and each count can be set
on its own (``ISOLATE_LOAD_SEQUENTIAL``, ``_THREADS``, ``_PER_THREAD``, ``_CLI``, ``_DETACHED``,
``_EXECS``, ``_CHURN``).  Figures go to ``ISOLATE_RELIABILITY_LOG`` (support/chaos.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.chaos import Host, cli_env, isolate, monitor_pids, record_figures, the_monitor, wait_until
from support.commands import ISOLATE_BIN

from isolate import Limits, Sandbox

SHORT = {"SEQUENTIAL": 100, "THREADS": 4, "PER_THREAD": 25, "CLI": 20, "DETACHED": 30, "EXECS": 60, "CHURN": 30}
LONG = {"SEQUENTIAL": 1000, "THREADS": 8, "PER_THREAD": 250, "CLI": 200, "DETACHED": 500, "EXECS": 1000, "CHURN": 300}

# The monitor's growth allowed over the storm.  What it keeps per running sandbox (a _Sandbox,
# its plan, record and pidfd: a few KiB) is there before the storm; what the storm adds and
# removes (CHURN sandboxes started, reaped, recorded) must be given back.  Python's allocator
# keeps freed arenas and a record or two in its free lists, so a flat monitor still moves by a
# few hundred KiB; a leak of one plan per start (about 10 KiB of objects) over 300 starts is
# 3 MiB.  So: 2 MiB, and in the short form (30 starts) the same bound says little on its own,
# which is why the long form is run too.
MONITOR_GROWTH = 2 << 20


def count(name: str) -> int:
    default = (LONG if os.environ.get("ISOLATE_LOAD") == "long" else SHORT)[name]
    return int(os.environ.get(f"ISOLATE_LOAD_{name}", default))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A private state directory; whatever a failed test left there is removed after it."""
    path = tmp_path / "state"
    yield path
    rows = json.loads(isolate(path, "ps", "-a", "--json").stdout or b"[]")
    for row in rows:
        isolate(path, "rm", "-f", row["id"])
    isolate(path, "gc")
    wait_until(lambda: not monitor_pids(path), timeout=15)


def check_run(result: object, n: int) -> str | None:
    """None when run ``n`` printed its number and exited with n % 7, else what went wrong."""
    got = (getattr(result, "exit_code", None), getattr(result, "stdout", None))
    want = (n % 7, f"{n}\n".encode())
    return None if got == want else f"run {n}: {got!r}, want {want!r}"


def command(n: int) -> list[str]:
    return ["sh", "-c", f"echo {n}; exit {n % 7}"]


def test_sequential_library_runs(busybox_root: Path, state: Path) -> None:
    runs = count("SEQUENTIAL")
    host = Host(state)
    box = Sandbox(busybox_root, limits=Limits(memory="32M", pids=16), state_dir=str(state))
    started = time.monotonic()
    wrong = [w for n in range(runs) if (w := check_run(box.run(command(n), capture=True), n))]
    seconds = time.monotonic() - started
    box.close()
    left = host.leaks()
    record_figures("load:library-sequential", runs=runs, wrong=len(wrong), leaks=len(left), seconds=round(seconds, 1))
    assert wrong == [] and left == [], (wrong[:5], left)


def test_concurrent_library_runs(busybox_root: Path, state: Path) -> None:
    """THREADS threads share one Sandbox (run is thread-safe), PER_THREAD runs each."""
    threads, per_thread = count("THREADS"), count("PER_THREAD")
    host = Host(state)
    box = Sandbox(busybox_root, limits=Limits(memory="32M", pids=16), state_dir=str(state))
    wrong: list[str] = []

    def worker(t: int) -> None:
        for i in range(per_thread):
            n = t * per_thread + i
            try:
                problem = check_run(box.run(command(n), capture=True), n)
            except Exception as exc:  # noqa: BLE001 - counted as a wrong result
                problem = f"run {n}: {exc!r}"
            if problem:
                wrong.append(problem)

    started = time.monotonic()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.monotonic() - started
    box.close()
    left = host.leaks()
    record_figures("load:library-concurrent", runs=threads * per_thread, threads=threads, wrong=len(wrong),
                   leaks=len(left), seconds=round(seconds, 1))  # fmt: skip
    assert wrong == [] and left == [], (wrong[:5], left)


def test_concurrent_cli_runs(busybox_root: Path, state: Path) -> None:
    """CLI `isolate run` processes, all started at once, each checked."""
    runs = count("CLI")
    host = Host(state)
    env = cli_env(state)
    started = time.monotonic()
    procs = [subprocess.Popen([ISOLATE_BIN, "run", "--memory", "32M", "--pids", "16", "--rootfs", str(busybox_root),
                               "--", *command(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in range(runs)]  # fmt: skip
    wrong = []
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        if (proc.returncode, out) != (n % 7, f"{n}\n".encode()):
            wrong.append(f"run {n}: exit {proc.returncode}, {out!r}, {err!r}")
    seconds = time.monotonic() - started
    left = host.leaks()
    record_figures("load:cli-concurrent", runs=runs, wrong=len(wrong), leaks=len(left), seconds=round(seconds, 1))
    assert wrong == [] and left == [], (wrong[:5], left)


def memory(pid: int) -> tuple[int, int, int]:
    """(RSS, USS, open descriptors) of a process."""
    import psutil

    proc = psutil.Process(pid)
    info = proc.memory_full_info()
    return info.rss, info.uss, proc.num_fds()


def test_detached_sandboxes_with_an_exec_storm(busybox_root: Path, state: Path) -> None:
    """DETACHED sandboxes under one monitor; then EXECS `isolate exec` into them, 8 at a time, while
    CHURN short sandboxes start and end through the same monitor.  Every exec's output is its
    own; the monitor's memory (RSS, USS) and descriptors after the storm are those of before."""
    sandboxes, execs, churn = count("DETACHED"), count("EXECS"), count("CHURN")
    host = Host(state)
    run = ["run", "-d", "--memory", "16M", "--pids", "8", "--rootfs", str(busybox_root), "--"]

    def start(n: int) -> str:
        done = isolate(state, *run, "sh", "-c", f"echo up {n}; sleep 100000")
        assert done.returncode == 0, done.stderr
        return str(done.stdout.decode().strip())

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(start, range(sandboxes)))
    start_seconds = time.monotonic() - started
    monitor = the_monitor(state)
    assert monitor is not None
    # warm-up: a round of each kind of work the storm does, so first-use allocations are in
    for sid in ids[:8]:
        assert isolate(state, "exec", sid, "true").returncode == 0
    warm = [start(sandboxes + k) for k in range(4)]
    for sid in warm:
        assert isolate(state, "rm", "-f", sid).returncode == 0
    before = memory(monitor)

    wrong: list[str] = []

    def one_exec(k: int) -> None:
        sid = ids[k % len(ids)]
        done = isolate(state, "exec", sid, "sh", "-c", f"echo {k} $(cat /proc/1/cmdline | tr '\\0' ' ')")
        if done.returncode != 0 or not done.stdout.startswith(f"{k} ".encode()):
            wrong.append(f"exec {k} into {sid}: exit {done.returncode}, {done.stdout!r}, {done.stderr!r}")

    def one_churn(k: int) -> None:
        done = isolate(state, *run, "sh", "-c", f"exit {k % 5}")
        if done.returncode != 0:
            wrong.append(f"start {k}: {done.stderr!r}")
            return
        sid = done.stdout.decode().strip()
        waited = isolate(state, "wait", sid)
        if waited.returncode != k % 5:
            wrong.append(f"churn {k}: wait said {waited.returncode}, want {k % 5}: {waited.stderr!r}")
        isolate(state, "rm", sid)

    storm_started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(one_exec, k) for k in range(execs)] + [pool.submit(one_churn, k) for k in range(churn)]
        for job in jobs:
            job.result()
    storm_seconds = time.monotonic() - storm_started
    assert the_monitor(state) == monitor, "the monitor was replaced during the storm"
    after = memory(monitor)
    rows = json.loads(isolate(state, "ps", "--json").stdout)
    running = sorted(r["id"] for r in rows if r["status"] == "running")
    # and each sandbox still runs its own command, with its output in its own log
    logs_right = all(Path(state / "sandboxes" / sid / "log").read_text() == f"up {n}\n" for n, sid in enumerate(ids))

    with ThreadPoolExecutor(4) as pool:
        removed = list(pool.map(lambda sid: isolate(state, "rm", "-f", sid).returncode, ids))
    isolate(state, "gc")
    wait_until(lambda: not monitor_pids(state), timeout=30)
    left = host.leaks()
    growth_rss, growth_uss = after[0] - before[0], after[1] - before[1]
    record_figures("load:detached-exec-storm", sandboxes=sandboxes, execs=execs, churn=churn, wrong=len(wrong),
                   leaks=len(left), start_seconds=round(start_seconds, 1), storm_seconds=round(storm_seconds, 1),
                   monitor_rss_before=before[0], monitor_rss_after=after[0], monitor_uss_before=before[1],
                   monitor_uss_after=after[1], monitor_fds_before=before[2], monitor_fds_after=after[2])  # fmt: skip
    assert wrong == [], wrong[:5]
    assert running == sorted(ids) and logs_right
    assert set(removed) == {0}
    assert left == [], left
    assert after[2] == before[2], f"the monitor's descriptors went from {before[2]} to {after[2]}"
    assert growth_rss <= MONITOR_GROWTH and growth_uss <= MONITOR_GROWTH, (before, after)
