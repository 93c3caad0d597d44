"""Kill -9 at random moments, then `isolate gc`, then count what was left.

One iteration: start a target (a CLI command, a library run, an OCI runtime call), sleep a delay
drawn from a seeded RNG, SIGKILL the chosen process (the command itself, or the monitor, helper
or zygote that serves it: only processes this test started), let the survivors settle, run gc,
and look for leftovers with the probes of support/host.py.  The seed is in every failure
message, so ``ISOLATE_CHAOS_SEED=N`` runs the very same delays again.

Counts come from the environment, so CI runs a short form and scripts/reliability a long one:
``ISOLATE_CHAOS_ITERATIONS`` (per target, default :data:`SHORT`) and ``ISOLATE_CHAOS_SEED``.
Each target's figures (iterations, kills that landed, leaks) are appended as one JSON line to
``ISOLATE_RELIABILITY_LOG`` when it is set (scripts/reliability prints them as a table).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from support.commands import ISOLATE_BIN
from support.host import helper_sockets, host_mounts, open_fds, processes_matching, sandbox_cgroups, state_entries

SHORT = 15  # iterations per target in CI: every target of test_kill9 in under two minutes in all
SETTLE = 5.0  # seconds a killed tree may take to finish dying before what is left counts as leaked


def iterations(default: int = SHORT) -> int:
    return int(os.environ.get("ISOLATE_CHAOS_ITERATIONS", default))


def seed() -> int:
    """The run's seed: ``ISOLATE_CHAOS_SEED``, else a fresh one (printed with any failure)."""
    value = os.environ.get("ISOLATE_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


def record_figures(name: str, **figures: object) -> None:
    """One JSON line of figures for scripts/reliability (nothing unless ISOLATE_RELIABILITY_LOG)."""
    path = os.environ.get("ISOLATE_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


def sigkill(pid: int) -> bool:
    """SIGKILL ``pid``; False when it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def wait_until(condition: Callable[[], object], timeout: float = SETTLE, pause: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)


def isolate(state_dir: Path, *args: str, store: Path | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """The `isolate` CLI with this test's private state directory (and image store)."""
    return subprocess.run([ISOLATE_BIN, *args], env=cli_env(state_dir, store, env), capture_output=True,
                          timeout=timeout)  # fmt: skip


def cli_env(state_dir: Path, store: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ISOLATE_FAULT"}
    env.update({"ISOLATE_STATE_DIR": str(state_dir), **(extra or {})})
    if store is not None:
        env["ISOLATE_ROOT"] = str(store)
    return env


def monitor_pids(state_dir: Path) -> list[int]:
    """The monitor of ``state_dir`` and its forks (zygote), oldest (the monitor) first."""
    pids = processes_matching(f"serve({str(state_dir)!r}")
    return sorted(pids, key=_start_time)


def the_monitor(state_dir: Path) -> int | None:
    """The monitor of ``state_dir`` (while it starts, the launcher that forks it)."""
    # its zygote and the sandboxes' inits are forks with its command line, named isolate-*
    pids = [p for p in monitor_pids(state_dir) if not comm(p).startswith("isolate-")]
    if len(pids) > 1:  # the launcher and the monitor it forked: the monitor
        pids = [p for p in pids if _parent(p) in pids] or pids
    return pids[-1] if pids else None


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return 0


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                pass
    return found


def store_leftovers(store: Path) -> list[str]:
    """What a killed import may leave in the image store that it must not: `isolate image verify`
    (exit 0) where this isolate has it, and in any case the checks below.

    TODO(isolate image verify): once `image verify` has landed, keep only its call: it checks all
    of this and each layer's files.  Until then: no import in progress left behind (tmp/ empty,
    no half-written file), images.json readable, every image's config blob and layers complete.
    """
    if not store.exists():
        return []
    found = []
    verify = subprocess.run([ISOLATE_BIN, "image", "--root", str(store), "verify"], capture_output=True, timeout=120)
    if verify.returncode == 1:
        found += [f"image verify: {line}" for line in verify.stdout.decode().splitlines()]
    elif verify.returncode != 0 and b"No such command" not in verify.stderr:
        found.append(f"image verify failed ({verify.returncode}): {verify.stderr.decode().strip()}")
    tmp = store / "tmp"
    if tmp.is_dir():
        found += [f"temporary {p}" for p in sorted(tmp.iterdir())]
    for dirpath, dirnames, filenames in os.walk(store):
        found += [f"half-written {dirpath}/{n}" for n in filenames + dirnames if ".tmp-" in n]
    try:
        records = json.loads((store / "images.json").read_text()) if (store / "images.json").exists() else {}
    except ValueError as exc:
        return found + [f"images.json unreadable: {exc}"]
    for image_id, record in records.items():
        if not (store / "blobs" / "sha256" / image_id.removeprefix("sha256:")).is_file():
            found.append(f"image {image_id}: config blob missing")
        for diff_id in record["layers"]:
            layer = store / "layers" / diff_id.removeprefix("sha256:")
            if not (layer / "root").is_dir() or not (layer / "meta.json").is_file():
                found.append(f"image {image_id}: layer {diff_id} missing or incomplete")
    layers = store / "layers"
    for layer in sorted(layers.iterdir()) if layers.is_dir() else []:
        if not (layer / "meta.json").is_file():
            found.append(f"layer {layer.name}: no meta.json (half made)")
    return found


class Host:
    """What the host looked like before the first kill; :meth:`leaks` names what differs now.

    ``state_dir``: the test's private state directory (whose monitor may keep running between
    iterations: ``monitor_may_run``); ``store``: its image store; ``markers``: words in the
    commands of its sandboxes, whose processes must all be gone.
    """

    def __init__(self, state_dir: Path, store: Path | None = None) -> None:
        self.state_dir = state_dir
        self.store = store
        self.mounts = Counter(host_mounts())
        self.cgroups = set(sandbox_cgroups())
        self.fds = open_fds()

    def leaks(self, markers: tuple[str, ...] = (), monitor_may_run: bool = False,
              keep_cgroups: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
        """Everything left over, after waiting up to SETTLE seconds for dying processes."""
        found: list[str] = []

        def look() -> bool:
            found.clear()
            for marker in markers:
                found.extend(f"process {p} ({comm(p)}) of {marker}" for p in processes_matching(marker))
            found.extend(f"cgroup {c}" for c in sorted(set(sandbox_cgroups()) - self.cgroups)
                         if os.path.basename(c) not in keep_cgroups)  # fmt: skip
            extra = Counter(host_mounts()) - self.mounts
            found.extend(f"mount {m}" for m in sorted(extra))
            entries = state_entries(str(self.state_dir))
            if monitor_may_run:
                entries.discard(os.path.join(self.state_dir, "monitor.sock"))
            elif monitor_pids(self.state_dir):
                found.append(f"monitor of {self.state_dir} still running ({monitor_pids(self.state_dir)})")
            found.extend(f"state {e}" for e in sorted(entries) if not _kept_sandbox(e, keep_cgroups))
            leaked = open_fds() - self.fds - helper_sockets()
            found.extend(f"descriptor {fd} -> {_readlink(fd)}" for fd in sorted(leaked))
            if self.store is not None:
                found.extend(store_leftovers(self.store))
            return not found

        wait_until(look, timeout=SETTLE, pause=0.05)
        return list(found)


def _kept_sandbox(entry: str, keep: tuple[str, ...]) -> bool:
    parts = entry.split(os.sep)
    return any(k in parts for k in keep)


def _readlink(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


class Chaos:
    """The iterations of one target: a seeded RNG, the figures, and the failure message."""

    def __init__(self, target: str, count: int | None = None, run_seed: int | None = None) -> None:
        self.target = target
        self.count = iterations() if count is None else count
        self.seed = seed() if run_seed is None else run_seed
        self.rng = random.Random(self.seed)
        self.landed = 0  # kills that hit a live process (the others came after it finished)
        self.leaks: list[str] = []
        self.started = time.monotonic()
        self.iteration = 0

    def each(self) -> Iterator[int]:
        """The iterations, 1 to count (self.iteration follows, for the failure message)."""
        for n in range(1, self.count + 1):
            self.iteration = n
            yield n

    def delay(self, longest: float) -> float:
        return self.rng.uniform(0.0, longest)

    def kill(self, pid: int | None) -> bool:
        landed = pid is not None and sigkill(pid)
        self.landed += landed
        return landed

    def where(self) -> str:
        return (f"{self.target}: iteration {self.iteration} of {self.count}, seed {self.seed} "
                f"(ISOLATE_CHAOS_SEED={self.seed} reproduces it)")  # fmt: skip

    def check(self, leaks: list[str]) -> None:
        """Record and fail on leftovers of this iteration."""
        if leaks:
            self.leaks += [f"iteration {self.iteration}: {leak}" for leak in leaks]
            self.report()
            raise AssertionError(f"{self.where()}: left {leaks}")

    def report(self) -> None:
        record_figures(f"kill9:{self.target}", iterations=self.iteration, planned=self.count, seed=self.seed,
                       kills_landed=self.landed, leaks=len(self.leaks),
                       seconds=round(time.monotonic() - self.started, 1))  # fmt: skip
