"""Exit status, signals, timeouts, stdio, the spawn helper, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.host import helper_sockets, host_mounts, open_fds, processes_matching, state_entries

from isolate import CommandNotExecutableError, CommandNotFoundError, ConfigError, Sandbox, SetupError
from isolate.sandbox import HELPER_THRESHOLD


def test_exit_code_propagates(busybox_root: Path) -> None:
    result = Sandbox(busybox_root).run(["sh", "-c", "exit 3"])
    assert (result.status, result.exit_code, result.signal) == ("nonzero-exit", 3, None)
    assert Sandbox(busybox_root).run(["true"]).status == "ok"


def test_death_by_signal_is_reported() -> None:
    # A fault is forced even on a pid namespace's init (other signals from inside are not).
    result = Sandbox().run(["python3", "-c", "import ctypes; ctypes.string_at(0)"])
    assert (result.status, result.exit_code, result.signal) == ("signaled", 128 + signal.SIGSEGV, signal.SIGSEGV)


def test_missing_command(busybox_root: Path) -> None:
    with pytest.raises(CommandNotFoundError, match="nope: command not found") as info:
        Sandbox(busybox_root).run(["nope"])
    assert info.value.exit_code == 127


def test_not_executable(busybox_root: Path) -> None:
    with pytest.raises(CommandNotExecutableError, match="Permission denied") as info:
        Sandbox(busybox_root).run(["/etc/passwd"])
    assert info.value.exit_code == 126


def test_capture_and_input(busybox_root: Path) -> None:
    result = Sandbox(busybox_root).run(["sh", "-c", "cat; echo err >&2"], input=b"x" * 300000, capture=True)
    assert result.stdout == b"x" * 300000 and result.stderr == b"err\n"


def test_stdio_passes_through(busybox_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        Sandbox(busybox_root).run(["echo", "through"], stdout=f)
    assert out.read_bytes() == b"through\n"


def test_timeout_kills_everything(busybox_root: Path, marker: str) -> None:
    start = time.monotonic()
    result = Sandbox(busybox_root).run(["sh", "-c", "sleep 100 & sleep 101", marker], timeout=0.3)
    assert result.status == "timed-out" and result.signal == signal.SIGKILL
    assert time.monotonic() - start < 3
    assert processes_matching(marker) == []


def test_times_are_measured(busybox_root: Path) -> None:
    result = Sandbox(busybox_root).run(["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"])
    assert result.ok and result.cpu_time > 0.01 and result.wall_time >= result.cpu_time * 0.5
    data = json.loads(result.to_json())
    assert data["status"] == "ok" and data["exit_code"] == 0 and data["cpu_time"] > 0


def test_bad_rootfs_leaves_nothing() -> None:
    with pytest.raises(ConfigError, match="/nope: rootfs does not exist"):
        Sandbox("/nope").run(["true"])


def test_failed_setup_leaves_nothing(busybox_root: Path, tmp_path: Path) -> None:
    # The kernel rejects the last mount, after the overlay and /proc were made (and with
    # --keep, after its host directories were): all of it must go.
    sandbox = Sandbox(busybox_root, tmpfs=["/scratch:size=lots"], keep=True)
    with pytest.raises(SetupError, match="mount -t tmpfs .*/scratch failed: Invalid argument") as info:
        sandbox.run(["true"])
    assert info.value.exit_code == 125


@pytest.mark.parametrize("spawn", ["direct", "helper"])
def test_spawn_modes(spawn: str, busybox_root: Path) -> None:
    result = Sandbox(busybox_root, spawn=spawn).run(["sh", "-c", "echo $$; exit 4"], capture=True)
    assert (result.exit_code, result.stdout) == (4, b"1\n")
    with pytest.raises(CommandNotFoundError):
        Sandbox(busybox_root, spawn=spawn).run(["nope"])


BIG_CALLER = """
import json, sys, time
from isolate import Sandbox
hog = bytearray(%d)
hog[::4096] = b"x" * len(hog[::4096])
result = Sandbox(sys.argv[1]).run(["sh", "-c", "echo $$"], capture=True)
from isolate.process import helper
print(json.dumps({"out": result.stdout.decode(), "helper": helper.current_pool() is not None}))
"""


def test_large_caller_uses_the_helper(busybox_root: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", BIG_CALLER % (HELPER_THRESHOLD * 4), str(busybox_root)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == {"out": "1\n", "helper": True}


HELPER_ORPHAN = """
import sys
from isolate import Sandbox
Sandbox(sys.argv[1], spawn="helper").run(["sh", "-c", "sleep 100; true", sys.argv[2]])
"""


def test_helper_ends_sandboxes_when_the_caller_dies(busybox_root: Path, marker: str) -> None:
    caller = subprocess.Popen([sys.executable, "-c", HELPER_ORPHAN, str(busybox_root), marker])
    try:
        _wait_for(lambda: len(processes_matching(marker)) == 1)
    finally:
        caller.kill()
        caller.wait()
    _wait_for(
        lambda: processes_matching(marker) == [] and processes_matching("isolate.process.helper import serve") == []
    )


def test_sandbox_dies_with_the_isolate_process(busybox_root: Path, marker: str) -> None:
    from support.commands import ISOLATE_BIN

    proc = subprocess.Popen(
        [ISOLATE_BIN, "run", "--rootfs", str(busybox_root), "--", "sh", "-c", "sleep 100; true", marker]
    )
    try:
        _wait_for(lambda: len(processes_matching(marker)) == 2)  # isolate itself and the sandbox
    finally:
        proc.kill()
        proc.wait()
    _wait_for(lambda: processes_matching(marker) == [])
    # A killed supervisor cannot remove the sandbox's cgroup or lock; `isolate gc` does.
    from support.commands import cli
    from support.host import sandbox_cgroups, state_entries

    left = sandbox_cgroups()
    assert len({os.path.basename(d) for d in left}) == (1 if left else 0)
    gc = cli("gc")
    assert gc.returncode == 0 and sandbox_cgroups() == []
    assert all(f"removed cgroup {d}" in gc.stdout.decode() for d in left)
    assert not [e for e in state_entries() if "/locks/" in e]


def test_two_hundred_runs_leave_nothing(busybox_root: Path) -> None:
    sandbox = Sandbox(busybox_root)
    mounts, fds, state = host_mounts(), open_fds(), state_entries()
    children = _children()
    for i in range(200):
        result = sandbox.run(["sh", "-c", f"echo {i} > /f; cat /f"], capture=True)
        assert result.stdout == f"{i}\n".encode()
    assert host_mounts() == mounts
    assert open_fds() - helper_sockets() == fds - helper_sockets()
    assert state_entries() == state
    assert _children() == children
    assert open(f"/proc/{os.getpid()}/status").read().count("Threads:\t1\n") == 1


def test_concurrent_runs(busybox_root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sandbox = Sandbox(busybox_root)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: sandbox.run(["sh", "-c", f"echo {i}; echo $$"], capture=True), range(32)))
    assert [r.stdout for r in results] == [f"{i}\n1\n".encode() for i in range(32)]
    assert len({r.sandbox_id for r in results}) == 32


def _children() -> set[int]:
    from support.host import sandbox_children

    return set(sandbox_children())


def _wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


NO_LAZY_IMPORTS = """
import sys
import isolate
from isolate import Sandbox, CommandNotFoundError, SetupError
# Evict what the child might import lazily: after pivot_root it could not import it again
# (the sandbox has no Python), so any lazy import there breaks the run.
for name in [m for m in sys.modules if not m.startswith(("isolate", "_", "sys", "builtins", "posix", "os"))]:
    del sys.modules[name]
root = sys.argv[1]
assert Sandbox(root).run(["sh", "-c", "exit 3"]).exit_code == 3
for argv, error in ((["nope"], CommandNotFoundError), (["true"], SetupError)):
    try:
        Sandbox(root, tmpfs=["/x:size=bad"] if argv == ["true"] else []).run(argv)
    except error as exc:
        print(type(exc).__name__, exc)
"""


def test_child_imports_nothing(busybox_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_LAZY_IMPORTS, str(busybox_root)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("CommandNotFoundError nope: command not found")
    assert lines[1].startswith("SetupError mount -t tmpfs") and lines[1].endswith("Invalid argument")
