"""The ``isolate`` command: exit statuses, signals, JSON, and one clear line per error."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN, cli
from support.host import processes_matching


def test_exit_status_and_output(busybox_root: Path) -> None:
    proc = cli("run", "--rootfs", str(busybox_root), "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (proc.returncode, proc.stdout, proc.stderr) == (5, b"out\n", b"err\n")


def test_host_image_demo() -> None:
    proc = cli("run", "--", "sh", "-c", "echo $$; hostname")
    assert proc.returncode == 0 and proc.stdout.split(b"\n")[0] == b"1"


def test_stdin_passes_through(busybox_root: Path) -> None:
    assert cli("run", "--rootfs", str(busybox_root), "--", "cat", input=b"piped\n").stdout == b"piped\n"


@pytest.mark.parametrize("command,code", [(["nope"], 127), (["/etc/passwd"], 126)])
def test_exec_failures(command: list[str], code: int, busybox_root: Path) -> None:
    proc = cli("run", "--rootfs", str(busybox_root), "--", *command)
    assert proc.returncode == code
    assert proc.stderr.decode().startswith(f"isolate: {command[0]}: ")
    assert proc.stderr.count(b"\n") == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rootfs", "/nope"], "isolate: /nope: rootfs does not exist"),
        (["--share", "mount"], "isolate: --share mount: the sandbox needs its own mount namespace"),
        (["--share", "pid,bogus"], "isolate: --share bogus: unknown namespace"),
        (["--share", "uts", "--hostname", "x"], "isolate: --hostname needs a UTS namespace of its own"),
        (["--volume", "nocolon"], "isolate: --volume 'nocolon': expected HOST:CONTAINER[:ro|rw]"),
        (["--volume", "/nonexistent-src:/x"], "isolate: /nonexistent-src: volume source does not exist"),
        (["--workdir", "relative"], "isolate: --workdir 'relative' must be an absolute path"),
        (["--user", "bob"], "isolate: --user 'bob': expected numeric UID[:GID]"),
        (["--wall-time", "soon"], "isolate: 'soon': not a duration"),
        (["--tmpfs", "/x:bogus"], "isolate: --tmpfs /x:bogus: unknown option 'bogus'"),
        (["--hostname", "bad name"], "isolate: --hostname 'bad name': use letters, digits"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    proc = cli("run", *args, "--", "true")
    assert proc.returncode == 125
    assert proc.stderr.decode().startswith(message), proc.stderr
    assert proc.stderr.count(b"\n") == 1


def test_unknown_option_and_missing_command() -> None:
    proc = cli("run", "--frob", "--", "true")
    assert proc.returncode == 125 and b"No such option '--frob'" in proc.stderr
    proc = cli("run", "--")
    assert (
        proc.returncode == 125 and proc.stderr == b"isolate: no command given: isolate run [OPTIONS] -- CMD [ARGS...]\n"
    )


def test_json_and_result_file(busybox_root: Path, tmp_path: Path) -> None:
    result_file = tmp_path / "result.json"
    proc = cli(
        "run",
        "--json",
        "--result-file",
        str(result_file),
        "--rootfs",
        str(busybox_root),
        "--",
        "sh",
        "-c",
        "echo hi; exit 2",
    )
    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 2 and lines[0] == "hi"
    data = json.loads(lines[-1])
    assert data == json.loads(result_file.read_text())
    assert data["status"] == "nonzero-exit" and data["exit_code"] == 2 and data["signal"] is None
    assert {"wall_time", "cpu_time", "user_time", "system_time", "sandbox_id"} <= set(data)


def test_json_on_isolate_error() -> None:
    proc = cli("run", "--json", "--rootfs", "/nope", "--", "true")
    data = json.loads(proc.stdout)
    assert proc.returncode == 125 and data["status"] == "isolate-error" and "rootfs" in data["error"]


def test_wall_time(busybox_root: Path) -> None:
    start = time.monotonic()
    proc = cli("run", "--json", "--wall-time", "300ms", "--rootfs", str(busybox_root), "--", "sleep", "30")
    assert time.monotonic() - start < 5
    assert proc.returncode == 137 and json.loads(proc.stdout)["status"] == "timed-out"


@contextlib.contextmanager
def _started(busybox_root: Path, marker: str, *command: str) -> Iterator[subprocess.Popen[bytes]]:
    """``isolate run`` in the background, up and running; killed by pid if the test fails."""
    proc = subprocess.Popen(
        [ISOLATE_BIN, "run", "--rootfs", str(busybox_root), "--", *command, marker], stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while len(processes_matching(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # let the shell install its trap
        yield proc
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_reaches_a_command_that_handles_it(sig: int, busybox_root: Path, marker: str) -> None:
    script = "trap 'echo caught; exit 7' TERM INT; while :; do sleep 0.05; done"
    with _started(busybox_root, marker, "sh", "-c", script) as proc:
        proc.send_signal(sig)
        out = proc.stdout.read() if proc.stdout else b""
        assert (proc.wait(timeout=10), out) == (7, b"caught\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_ends_a_command_that_does_not(sig: int, busybox_root: Path, marker: str) -> None:
    # The kernel drops unhandled signals sent to a pid namespace's init; isolate applies the
    # default action itself, so `isolate run -- sleep` ends on Ctrl-C like plain `sleep`.
    with _started(busybox_root, marker, "sh", "-c", "sleep 100; true") as proc:
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 128 + sig
    assert processes_matching(marker) == []


def test_rootless_run_as_an_ordinary_user() -> None:
    """A user that is not root gets a user namespace: root inside, itself outside, the host image."""
    import shutil

    state = "/tmp/isolate-65534"
    existed = os.path.exists(state)
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", ISOLATE_BIN, "run"]
    try:
        proc = subprocess.run([*nobody, "--", "sh", "-c", "id -u; cat /proc/self/uid_map; echo $$; echo x > /f"],
                              capture_output=True, cwd="/", timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().split() == ["0", "0", "65534", "1", "1"]
        # limits need a cgroup, which an ordinary user cannot make here: one clear line
        limited = subprocess.run([*nobody, "--memory", "10M", "--", "true"], capture_output=True, cwd="/", timeout=60)
        assert limited.returncode == 125 and limited.stderr.startswith(b"isolate: rootless runs have no cgroup")
        assert limited.stderr.count(b"\n") == 1
    finally:
        if not existed:
            shutil.rmtree(state, ignore_errors=True)


def test_keep_prints_the_upper_dir(busybox_root: Path) -> None:
    proc = cli("run", "--keep", "--rootfs", str(busybox_root), "--", "sh", "-c", "echo k > /kept")
    line = proc.stderr.decode().strip()
    assert proc.returncode == 0 and line.startswith("isolate: upper layer kept at ")
    upper = line.rsplit(" ", 1)[1]
    try:
        assert Path(upper, "kept").read_text() == "k\n"
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(upper))


def test_doctor() -> None:
    proc = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == 0
    assert checks["root"]["ok"] and checks["overlayfs"]["ok"] and checks["sandbox"]["ok"]
    assert checks["cgroups"]["detail"].split(",")[0] in ("layout v1", "layout v2", "layout hybrid")
    assert "isolate uses v" in checks["cgroups"]["detail"]
    assert b"[ok  ] sandbox" in cli("doctor").stdout


def test_help_lists_every_option() -> None:
    from isolate.cli.options import RUN_OPTIONS

    out = cli("run", "--help").stdout.decode()
    assert all(opt.names[0] in out for opt in RUN_OPTIONS)
