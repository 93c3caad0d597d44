"""Kill -9 at random moments (issue 17): the CLI during `run`, `run -d`, `exec` and `image import`;
the monitor; the spawn helper; the zygote; isolate-oci between `create` and `start`.  Each
iteration kills one process after a random delay, runs `isolate gc` (for isolate-oci, the
engine's `delete --force`), and then nothing may be left: no mount, cgroup, process, descriptor,
state record, lock file or temporary directory, and the image store still checks out.

Counts: ``ISOLATE_CHAOS_ITERATIONS`` per target (CI: support.chaos.SHORT); the seed of a failing
run is in its message (``ISOLATE_CHAOS_SEED``).  scripts/reliability runs the long form.  The
named points of isolate.faults are killed deterministically too (``ISOLATE_FAULT=POINT=kill``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.chaos import Chaos, Host, children, cli_env, comm, isolate, monitor_pids, sigkill, the_monitor, wait_until
from support.commands import ISOLATE_BIN
from support.host import processes_matching, reap_children, remove_cgroup_trees, sandbox_cgroups, sandbox_children
from support.oci_layouts import make_layout

from isolate import Limits, Sandbox
from isolate.errors import IsolateError
from isolate.faults import POINTS
from isolate.oci.template import default_config

OCI_BIN = os.path.join(os.path.dirname(sys.executable), "isolate-oci")
RUN = ["--memory", "32M", "--pids", "16"]


class Private:
    """A state directory and image store of this test's own; removed of everything at the end."""

    def __init__(self, base: Path) -> None:
        self.state = base / "state"
        self.store = base / "store"

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return isolate(self.state, *args, store=self.store, timeout=timeout)

    def popen(self, *args: str, fault: str | None = None) -> subprocess.Popen[bytes]:
        env = cli_env(self.state, self.store, {"ISOLATE_FAULT": fault} if fault else None)
        return subprocess.Popen([ISOLATE_BIN, *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip

    def rows(self) -> list[dict[str, Any]]:
        done = self("ps", "-a", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout or b"[]")  # type: ignore[no-any-return]

    def gc(self) -> list[str]:
        done = self("gc")
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().splitlines()

    def after_kill(self, keep: tuple[str, ...] = ()) -> list[str]:
        """gc, then the leftovers gc should have removed: sandboxes shown dead or never started.
        What survived the kill on purpose (running or stopped sandboxes) is removed after."""
        self.gc()
        # "exiting": its process ended and the monitor that owns it records how within moments
        wait_until(lambda: all(r["status"] != "exiting" for r in self.rows()))
        bad = [
            f"sandbox {r['id']} {r['status']} after gc"
            for r in self.rows()
            if r["status"] not in ("running", "stopped")
        ]
        for row in self.rows():
            if row["id"] not in keep:
                self("rm", "-f", row["id"])
        return bad

    def clean(self) -> None:
        for row in self.rows():
            self("rm", "-f", row["id"])
        self.gc()
        wait_until(lambda: not monitor_pids(self.state), timeout=10)
        for pid in monitor_pids(self.state):  # a monitor stuck by a failed test: ours, started here
            sigkill(pid)
        self.gc()


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Private]:
    mine = Private(tmp_path)
    yield mine
    mine.clean()


def run_and_kill(chaos: Chaos, proc: subprocess.Popen[bytes], longest: float) -> bool:
    """Kill the command after a random delay; True if it was still running then."""
    time.sleep(chaos.delay(longest))
    landed = proc.poll() is None and chaos.kill(proc.pid)
    proc.wait(timeout=60)
    if proc.stderr is not None:
        proc.stderr.close()
    return landed


def new_marker() -> str:
    return "chaos-" + os.urandom(5).hex()


def test_kill_cli_during_run(private: Private, busybox_root: Path) -> None:
    chaos = Chaos("cli-run")
    host = Host(private.state, private.store)
    for _ in chaos.each():
        marker = new_marker()
        proc = private.popen("run", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c", f"sleep 0.05; : {marker}")
        run_and_kill(chaos, proc, 0.2)
        chaos.check(private.after_kill() + host.leaks((marker,)))
    chaos.report()


def test_kill_cli_during_run_detached(private: Private, busybox_root: Path) -> None:
    chaos = Chaos("cli-run-d")
    host = Host(private.state, private.store)
    for _ in chaos.each():
        marker = new_marker()
        name = ["--name", marker] if chaos.rng.random() < 0.5 else []  # named starts write a record first
        proc = private.popen("run", "-d", *name, *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c",
                             f"sleep 30; : {marker}")  # fmt: skip
        run_and_kill(chaos, proc, 0.3)
        chaos.check(private.after_kill() + host.leaks((marker,), monitor_may_run=True))
    wait_until(lambda: not monitor_pids(private.state), timeout=10)
    chaos.check(host.leaks())
    chaos.report()


def test_kill_cli_during_exec(private: Private, busybox_root: Path) -> None:
    chaos = Chaos("cli-exec")
    box_marker = new_marker()
    started = private("run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c", f"sleep 1000; : {box_marker}")
    assert started.returncode == 0, started.stderr
    box = started.stdout.decode().strip()
    host = Host(private.state, private.store)
    for _ in chaos.each():
        marker = new_marker()
        proc = private.popen("exec", box, "sh", "-c", f"sleep 0.05; : {marker}")
        run_and_kill(chaos, proc, 0.25)
        leaks = private.after_kill(keep=(box,))
        leaks += host.leaks((marker,), monitor_may_run=True, keep_cgroups=(box,))
        if [r["status"] for r in private.rows() if r["id"] == box] != ["running"]:
            leaks.append(f"the sandbox {box} did not survive a killed exec")
        chaos.check(leaks)
    assert private("rm", "-f", box).returncode == 0
    wait_until(lambda: not monitor_pids(private.state), timeout=10)
    chaos.check(private.after_kill() + host.leaks((box_marker,)))
    chaos.report()


def import_layout(base: Path) -> Path:
    """An OCI layout of three layers of 300 small files each: its import takes a while."""
    layers: list[dict[str, str | None]] = [{f"d{n}/f{i}": f"layer {n} file {i}\n" * 20 for i in range(300)}
                                           for n in range(3)]  # fmt: skip
    make_layout(base / "layout", layers, ref="localhost/chaos:latest")
    return base / "layout"


def test_kill_cli_during_image_import(private: Private, tmp_path: Path) -> None:
    chaos = Chaos("cli-image-import")
    layout = import_layout(tmp_path)
    host = Host(private.state, private.store)
    timed = time.monotonic()
    first = private("image", "import", "--name", "chaos:first", str(layout))
    assert first.returncode == 0, first.stderr
    longest = (time.monotonic() - timed) * 1.3  # from before the start until after the end
    assert private("image", "rm", "chaos:first").returncode == 0
    for _ in chaos.each():
        proc = private.popen("image", "import", "--name", f"chaos:{chaos.iteration}", str(layout))
        landed = run_and_kill(chaos, proc, longest)
        leaks = private.after_kill()
        pruned = private("image", "prune")  # what a killed import left in tmp/ goes here (its lock is free)
        leaks += [] if pruned.returncode == 0 else [f"image prune failed: {pruned.stderr!r}"]
        leaks += host.leaks()
        images = private("image", "ls", "--json")
        names = [n for i in json.loads(images.stdout or b"[]") for n in i["names"]]
        if not landed and f"chaos:{chaos.iteration}" not in names:
            leaks.append(f"an import that finished did not record its image: {names}")
        chaos.check(leaks)
        for name in names:  # the next import unpacks every layer again
            private("image", "rm", name)
    chaos.report()


def test_kill_monitor(private: Private, busybox_root: Path) -> None:
    chaos = Chaos("monitor")
    host = Host(private.state, private.store)
    for _ in chaos.each():
        marker = new_marker()
        for _ in range(2):  # sandboxes it owns when it dies
            done = private("run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c", f"sleep 30; : {marker}")
            assert done.returncode == 0, (chaos.where(), done.stderr)
        # and one being handed over as it dies
        proc = private.popen(
            "run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c", f"sleep 30; : {marker}"
        )
        time.sleep(chaos.delay(0.25))
        chaos.kill(the_monitor(private.state))
        proc.wait(timeout=60)  # it fails or succeeds (with a monitor of its own), but it must end
        assert proc.stderr is not None
        proc.stderr.close()
        chaos.check(private.after_kill() + host.leaks((marker,), monitor_may_run=True))
    wait_until(lambda: not monitor_pids(private.state), timeout=10)
    chaos.check(host.leaks())
    chaos.report()


def zygote_of(pid: int) -> int | None:
    return next((c for c in children(pid) if comm(c) == "isolate-zygote"), None)


def test_kill_zygote(private: Private, busybox_root: Path) -> None:
    """The monitor's zygote while `run -d` hands it a sandbox, and a library caller's while a
    Sandbox runs in a loop: the next start gets a fresh zygote, and nothing is left."""
    chaos = Chaos("zygote")
    host = Host(private.state, private.store)
    box = Sandbox(busybox_root, limits=Limits(memory="32M", pids=16), state_dir=str(private.state))
    for _ in chaos.each():
        marker = new_marker()
        if chaos.iteration % 2:  # the monitor's
            keep = private("run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c", f"sleep 30; : {marker}")
            assert keep.returncode == 0, (chaos.where(), keep.stderr)
            proc = private.popen("run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "sh", "-c",
                                 f"sleep 30; : {marker}")  # fmt: skip
            time.sleep(chaos.delay(0.15))
            chaos.kill(zygote_of(the_monitor(private.state) or -1))
            proc.wait(timeout=60)
            assert proc.stderr is not None
            proc.stderr.close()
            again = private("run", "-d", *RUN, "--rootfs", str(busybox_root), "--", "true")
            leaks = (
                [] if again.returncode == 0 else [f"the monitor cannot start after its zygote died: {again.stderr!r}"]
            )
            leaks += private.after_kill()
            chaos.check(leaks + host.leaks((marker,), monitor_may_run=True))
        else:  # this process's own: a Sandbox run in a loop clones its next sandbox from it
            results: list[object] = []
            loop = threading.Thread(target=_runs, args=(box, marker, 4, results))
            loop.start()
            time.sleep(chaos.delay(0.25))
            chaos.kill(zygote_of(os.getpid()))
            loop.join(60)
            leaks = [f"a run ended badly: {r!r}" for r in results if not _fine(r)]
            after = box.run(["sh", "-c", "echo again"], capture=True)
            if after.stdout != b"again\n":
                leaks.append(f"no run after the zygote died: {after}")
            box.close()
            chaos.check(leaks + private.after_kill() + host.leaks((marker,), monitor_may_run=True))
    wait_until(lambda: not monitor_pids(private.state), timeout=10)
    chaos.check(host.leaks())
    chaos.report()


def _runs(box: Sandbox, marker: str, count: int, results: list[object]) -> None:
    for _ in range(count):
        try:
            results.append(box.run(["sh", "-c", f"sleep 0.02; echo {marker}"], capture=True))
        except IsolateError as exc:  # a start its zygote died under: one clear error
            results.append(exc)


def _fine(result: object) -> bool:
    """A run that completed with its output, or one that failed with IsolateError."""
    if isinstance(result, IsolateError):
        return True
    return getattr(result, "exit_code", None) == 0 or getattr(result, "exit_code", None) == 137


def test_kill_helper(private: Private, busybox_root: Path) -> None:
    """The spawn helper (the supervisor of a large caller's runs) dies mid-run: the run fails with
    one IsolateError or completes, the next run gets a new helper, and gc leaves nothing."""
    chaos = Chaos("helper")
    host = Host(private.state, private.store)
    box = Sandbox(busybox_root, limits=Limits(memory="32M", pids=16), state_dir=str(private.state), spawn="helper")
    box.run(["true"])  # a helper is idle in the pool from here on
    for _ in chaos.each():
        marker = new_marker()
        results: list[object] = []
        loop = threading.Thread(target=_runs, args=(box, marker, 1, results))
        loop.start()
        time.sleep(chaos.delay(0.12))
        helpers = [c for c in children(os.getpid()) if b"isolate.process.helper" in _cmdline(c)]
        chaos.kill(helpers[0] if helpers else None)
        loop.join(60)
        # Killed while idle in the pool, it is skipped once dead; a run that takes it in the
        # moment SIGKILL takes to land fails with one IsolateError, as a run it was serving does.
        wait_until(lambda dying=helpers: all(_state_letter(h) in "ZX" for h in dying))  # type: ignore[misc]
        leaks = [f"a run ended badly: {r!r}" for r in results if not _fine(r)]
        after = box.run(["sh", "-c", "echo again"], capture=True)
        if after.stdout != b"again\n":
            leaks.append(f"no run after the helper died: {after}")
        chaos.check(leaks + private.after_kill() + host.leaks((marker,)))
    chaos.report()


def _state_letter(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _all_reaped() -> bool:
    reap_children()
    return not sandbox_children()


def test_kill_oci_runtime_between_create_and_start(tmp_path: Path, busybox_root: Path) -> None:
    """isolate-oci killed at a random moment of `create` then `start`; the engine then deletes
    the container with `delete --force`, as podman and containerd do: nothing may be left."""
    chaos = Chaos("oci-create-start")
    root = tmp_path / "oci"
    host = Host(tmp_path / "unused-state")
    marker = new_marker()
    config = default_config(["sh", "-c", f"sleep 0.05; : {marker}"], rootfs=str(busybox_root))
    config["root"]["readonly"] = True
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))
    try:
        for _ in chaos.each():
            cid = f"chaos{chaos.iteration}"
            deadline = time.monotonic() + chaos.delay(0.35)
            quiet: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": subprocess.DEVNULL,
                "stderr": subprocess.DEVNULL,
            }
            proc = subprocess.Popen(
                [OCI_BIN, "--root", str(root), "create", "--bundle", str(tmp_path / "bundle"), cid], **quiet
            )
            started = False
            while time.monotonic() < deadline:
                if proc.poll() is not None and not started and proc.returncode == 0:
                    started = True
                    proc = subprocess.Popen([OCI_BIN, "--root", str(root), "start", cid], **quiet)
                time.sleep(0.002)
            if proc.poll() is None:
                chaos.kill(proc.pid)
            proc.wait(timeout=60)
            deleted = subprocess.run([OCI_BIN, "--root", str(root), "delete", "--force", cid], capture_output=True,
                                     timeout=60)  # fmt: skip
            leaks = [] if deleted.returncode == 0 else [f"delete --force failed: {deleted.stderr!r}"]
            wait_until(_all_reaped, timeout=5)
            left = sorted(os.listdir(root)) if root.exists() else []
            leaks += [f"state {root}/{e}" for e in left]
            chaos.check(leaks + host.leaks((marker,)))
    finally:
        reap_children()
        # what a failed iteration left must not fail every test after this one
        remove_cgroup_trees([c for c in sandbox_cgroups() if os.path.basename(c).startswith("chaos")])
        reap_children()
    chaos.report()


# ------------------------------------------------------------------ named points, deterministically


@pytest.mark.parametrize("point", sorted(p for p in POINTS if not p.startswith("import:"))
                         + ["step:AwaitCgroup", "step:PivotRoot", "step:JoinCgroup"])  # fmt: skip
def test_each_named_point_killed_leaves_nothing_after_gc(point: str, private: Private, busybox_root: Path) -> None:
    """ISOLATE_FAULT=POINT=kill: the process that reaches the point dies there (the CLI, the
    monitor, the sandbox's child); gc then removes all that is left."""
    host = Host(private.state, private.store)
    marker = new_marker()
    for detached in (False, True):
        if point.startswith("monitor:") and not detached:
            continue
        proc = private.popen("run", *(["-d"] if detached else []), *RUN, "--rootfs", str(busybox_root), "--",
                             "sh", "-c", f"sleep 0.1; : {marker}", fault=f"{point}=kill")  # fmt: skip
        _, err = proc.communicate(timeout=60)
        if point == "monitor:spawn":
            assert proc.returncode == -signal.SIGKILL, err
        # the sandbox ends (its command, or killed with its supervisor), and then the monitor
        # (killed at its point, or idle): then gc, and nothing may be left
        wait_until(lambda: not processes_matching(marker) and not monitor_pids(private.state), timeout=10)
        leaks = private.after_kill()
        assert leaks + host.leaks((marker,)) == [], (point, detached, proc.returncode, err)
