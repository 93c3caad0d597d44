"""Sandbox start latency, side by side: isolate (CLI and library) against runc, crun, bwrap and baselines.

Every contender runs /bin/true on the same busybox root (built with isolate.images.busybox.build_busybox_rootfs
unless --rootfs is given).  All of them are measured in one invocation, round-robin in a shuffled
order each round, so machine noise hits all of them alike; a few warm-up rounds are discarded.

    sudo /path/to/venv/bin/python scripts/bench            # 200 runs each (runc: 100), all sections
    sudo /path/to/venv/bin/python scripts/bench --quick    # 20 runs each, short sections: a smoke test
    scripts/bench --only crun,isolate-lib,isolate-lib-256M # these start-latency contenders only
    scripts/bench --only throughput,detached               # sections by name: throughput, detached, images

External commands are started with os.posix_spawn and reaped with os.waitpid, timed with
time.perf_counter around both.  The library is measured in worker subprocesses of the venv's
interpreter (one small caller, and callers holding 256 MiB of touched memory), so the big
allocation never touches this process; each worker times Sandbox.run() itself and reports JSON.
The isolate-lib contenders start each sandbox from nothing (Sandbox(prestart=False)), as a
first run does; isolate-lib-warm is the library's default for a Sandbox run again and again,
whose next sandbox is built while the previous command runs.
crun 1.8.1 refuses a hybrid cgroup layout, so on such hosts its worker runs in a private mount
namespace where a tmpfs hides /sys/fs/cgroup/unified (see ../shared/NOTES.md); each crun
invocation is timed from inside it, so the namespace set-up is not counted.

isolate and the OCI runtimes run with the same cgroup limits (memory 64 MiB, pids 32, cpu 0.5).

After the start latencies come three sections (skip them with --skip-throughput, --skip-detached,
--skip-images; --only without a section name skips them too):
  throughput  Sandbox.run(/bin/true) in a loop for --seconds: one caller (sequential runs/s; the
              Sandbox builds each next sandbox while a command runs, and once more with
              prestart=False), then 1, 2, 4, 8 concurrent callers (worker processes); crun
              run's sequential runs/s too.  The sequential loops take turns for --rounds
              rounds, shuffled each round; each reports its median window.
  detached    --detached N `sleep 3600` sandboxes started with isolate.detached.lifecycle.start_detached
              and N with `crun run -d` (one set torn down before the next), fewer with
              `isolate run -d` and `runc run -d`: per-start latency; host memory per idle sandbox
              (MemTotal - MemAvailable before and after, and the PSS of every process of the
              sandboxes, isolate's monitor included); teardown per sandbox (lifecycle.remove
              force=True, `isolate rm -f`, `crun/runc kill KILL` + wait + `delete`).
  images      scripts/bench-images: layer import against tar -x; start with 20 layers against 1.
A last table sets the issue's targets against what was measured (measured, not asserted).

Every isolate sandbox uses a private cgroup parent (isolate-bench-PID) and a private state
directory (ISOLATE_STATE_DIR in the temp dir), so nothing touches /run/isolate or the isolate
cgroups of a concurrent test run.
Results go to --out (default ./bench-results): bench.json, and bench.png when matplotlib is
importable (pip install matplotlib, or pass --install-matplotlib).
Nothing is left behind: mounts, cgroups, processes and temp dirs are checked before and after.
Stdlib only.
"""

from __future__ import annotations

import os

# The workers are re-executions of the launcher (scripts/bench ARGS, with the interpreter of their
# choice), which puts SCRIPTS_DIR on sys.path: they import this very package, whatever the cwd.
SCRIPTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(SCRIPTS_DIR, "bench")


def run(argv: list[str]) -> int:
    """scripts/bench ARGS; the hidden first words `__lib-worker` and `__crun-worker` start a worker, which
    imports only what it needs (a library worker's memory is part of what is measured)."""
    if argv[:1] == ["__lib-worker"]:
        from benchkit.workers import lib_worker

        return lib_worker(argv[1:])
    if argv[:1] == ["__crun-worker"]:
        from benchkit.workers import crun_worker

        return crun_worker(argv[1:])
    from benchkit.driver import main

    return main(argv)
