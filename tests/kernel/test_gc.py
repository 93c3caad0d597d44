"""`isolate gc` removes only what is provably dead and provably its own state directory's.

Two users of isolate on one host (root and a service with its own state directory, a test suite
with a private one) share isolate's cgroup parent.  A gc run with one state directory must never
kill or remove a sandbox of another, running or dead, nor one that starts while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN
from support.host import processes_matching, sandbox_cgroups, state_entries

from isolate.detached.monitor import socket_path


def isolate(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ISOLATE_STATE_DIR": str(state_dir)}
    return subprocess.run([ISOLATE_BIN, *args], env=env, capture_output=True, timeout=timeout)


def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def cgroups_of(sandbox_id: str) -> list[str]:
    return [d for d in sandbox_cgroups() if os.path.basename(d) == sandbox_id]


def monitor_pid(state_dir: Path) -> int:
    """The oldest process serving ``state_dir`` (its zygote is a fork with the same command line)."""
    found = subprocess.run(["pgrep", "-o", "-f", f"serve\\('{state_dir}'"], capture_output=True, text=True)
    return int(found.stdout.split()[0])


@pytest.fixture
def two_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two private state directories, as two services on one host would have; each test
    removes its sandboxes, and whatever a failed test left is removed by each one's own gc."""
    a, b = tmp_path / "a", tmp_path / "b"
    yield a, b
    for d in (a, b):
        for row in json.loads(isolate(d, "ps", "-a", "--json").stdout or b"[]"):
            isolate(d, "rm", "-f", row["id"])
        isolate(d, "gc")
        wait_for(lambda d=d: not os.path.exists(socket_path(str(d))), timeout=5)  # type: ignore[misc]


def start(state_dir: Path, root: Path, *command: str) -> str:
    proc = isolate(state_dir, "run", "-d", "--memory", "64M", "--rootfs", str(root), "--", *command)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def status(state_dir: Path, sandbox_id: str) -> str:
    rows = json.loads(isolate(state_dir, "ps", "-a", "--json").stdout)
    return next((str(r["status"]) for r in rows if r["id"] == sandbox_id), "gone")


def test_gc_of_one_state_dir_leaves_another_dirs_live_sandboxes(two_dirs: tuple[Path, Path], busybox_root: Path,
                                                                 marker: str) -> None:  # fmt: skip
    a, b = two_dirs
    in_a = start(a, busybox_root, "sh", "-c", "sleep 100; true", marker)
    in_b = start(b, busybox_root, "sh", "-c", "sleep 100; true", marker)
    # and a foreground run of a's, holding its lock and cgroup while b's gc runs
    fg = subprocess.Popen(
        [
            ISOLATE_BIN,
            "run",
            "--memory",
            "32M",
            "--rootfs",
            str(busybox_root),
            "--",
            "sh",
            "-c",
            f"sleep 3; echo {marker}",
        ],  # fmt: skip
        env={**os.environ, "ISOLATE_STATE_DIR": str(a)},
        stdout=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(processes_matching(marker)) >= 3)
        before = {sid: cgroups_of(sid) for sid in (in_a, in_b)}
        assert all(before.values())
        for gc_dir in (b, a, b):
            gc = isolate(gc_dir, "gc")
            assert gc.returncode == 0, gc.stderr
            assert gc.stdout == b"", f"gc of {gc_dir} removed something alive: {gc.stdout!r}"
        assert {sid: cgroups_of(sid) for sid in (in_a, in_b)} == before
        assert status(a, in_a) == "running" and status(b, in_b) == "running"
        out, _ = fg.communicate(timeout=30)
        assert fg.returncode == 0 and out.strip() == marker.encode()  # not 137: nobody killed it
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
        if fg.stdout is not None:
            fg.stdout.close()
    for d, sid in ((a, in_a), (b, in_b)):
        assert isolate(d, "rm", "-f", sid).returncode == 0
        assert cgroups_of(sid) == []


def test_gc_removes_its_own_dead_and_nothing_of_another_dir(two_dirs: tuple[Path, Path], busybox_root: Path,
                                                            marker: str) -> None:  # fmt: skip
    a, b = two_dirs
    in_a = start(a, busybox_root, "sh", "-c", "sleep 100; true", marker)
    dead = [start(b, busybox_root, "sh", "-c", "sleep 100; true", marker) for _ in range(2)]
    os.kill(monitor_pid(b), signal.SIGKILL)  # b's supervisor dies: b's sandboxes are dead, a's live
    wait_for(lambda: len(processes_matching(marker)) == 1)
    assert [status(b, sid) for sid in dead] == ["dead", "dead"]
    left = {sid: cgroups_of(sid) for sid in dead}
    # a's gc sees b's dead cgroups below isolate's parent: not its own, so it leaves them
    gc_a = isolate(a, "gc")
    assert gc_a.returncode == 0 and gc_a.stdout == b""
    assert {sid: cgroups_of(sid) for sid in dead} == left
    # b's gc removes b's dead sandboxes, and does not touch a's running one
    gc_b = isolate(b, "gc")
    assert gc_b.returncode == 0, gc_b.stderr
    for sid in dead:
        assert f"sandbox {sid}".encode() in gc_b.stdout and cgroups_of(sid) == []
    assert status(a, in_a) == "running" and cgroups_of(in_a)
    assert not [e for e in state_entries(str(b)) if "/locks/" in e or "/sandboxes/" in e]
    assert isolate(a, "rm", "-f", in_a).returncode == 0


def test_sandboxes_started_while_gc_runs_survive_it(two_dirs: tuple[Path, Path], busybox_root: Path) -> None:
    """Foreground runs of both directories start and end while gc of each runs in a loop: every
    run's output and exit status is its own (none is killed), and nothing is left."""
    a, b = two_dirs
    cgroups_before = sandbox_cgroups()
    stop = threading.Event()
    gc_failures: list[bytes] = []

    def gc_loop(d: Path) -> None:
        while not stop.is_set():
            gc = isolate(d, "gc")
            if gc.returncode != 0 or gc.stdout:
                gc_failures.append(gc.stdout + gc.stderr)

    loops = [threading.Thread(target=gc_loop, args=(d,)) for d in (a, b)]
    for t in loops:
        t.start()
    try:
        for i in range(12):
            d = (a, b)[i % 2]
            run = isolate(d, "run", "--memory", "32M", "--pids", "16", "--rootfs", str(busybox_root), "--",
                          "sh", "-c", f"sleep 0.2; echo {i}; exit {i % 5}")  # fmt: skip
            assert (run.returncode, run.stdout) == (i % 5, f"{i}\n".encode()), run.stderr
    finally:
        stop.set()
        for t in loops:
            t.join()
    assert gc_failures == []  # a live run is never a leftover, in its own directory or another
    assert sandbox_cgroups() == cgroups_before
    for d in (a, b):
        assert not [e for e in state_entries(str(d)) if "/locks/" in e]
