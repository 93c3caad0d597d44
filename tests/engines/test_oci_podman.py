"""isolate-oci as podman's OCI runtime: podman 4.3 and conmon drive it through runc's command line.

The image is a busybox root filesystem (``podman import``); podman keeps everything in a private
store (tests/podman_images.py) and calls the runtime through a wrapper that gives it a private
``--root`` and logs every invocation (argv, exit status, config.json of ``create``, process.json of
``exec``): a failing test shows the log's last entries.  ISOLATE_TEST_OCI_RUNTIME=/usr/sbin/runc
runs the same tests against runc (the reference); ISOLATE_TEST_OCI_LOG=FILE keeps the log in FILE.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.commands import require
from support.host import mountinfo
from support.podman_images import (
    add_runtime,
    cgroup_parent,
    cleanup,
    import_rootfs,
    podman,
    podman_command,
    runtime_root,
    store_cgroups,
)

ISOLATE_OCI = os.environ.get("ISOLATE_TEST_OCI_RUNTIME") or os.path.join(os.path.dirname(sys.executable), "isolate-oci")
RUNTIME = "isolate"  # the name podman knows it by (the store's containers.conf)
IMAGE = "localhost/isolate-oci-busybox:latest"
IMAGE_MARK = "busybox image for isolate-oci\n"  # /etc/isolate-image in IMAGE


@dataclass
class Engine:
    store: Path
    log: Path  # the runtime wrapper's log of invocations

    def podman(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """podman ARGS with our runtime; not checked: assert on ``ok(proc)`` or ``explain(proc)``."""
        return podman(self.store, *args, runtime=RUNTIME, check=False, input=input, timeout=120)

    def run(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """podman run --rm [OPTIONS] IMAGE CMD: ``args`` are the options, then "--", then CMD."""
        split = args.index("--")
        return self.podman("run", "--rm", "--pull=never", *args[:split], IMAGE, *args[split + 1 :], input=input)

    def log_tail(self, entries: int = 6) -> str:
        """The runtime's last invocations, without their config.json and process.json dumps."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no runtime invocation logged)"
        kept = []
        for entry in text.split("\n=== ")[-entries:]:
            kept.append(re.split("\n(?:config|process)\\.json \\(", entry)[0].strip())
        return "\n\n".join(kept)

    def explain(self, proc: subprocess.CompletedProcess[bytes]) -> str:
        cmd = proc.args[proc.args.index("--runtime") + 2 :] if "--runtime" in proc.args else proc.args
        return (
            f"podman {' '.join(map(str, cmd))}\nexit status {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}\n"
            f"--- runtime invocations ({self.log}) ---\n{self.log_tail()}"
        )

    def ok(self, proc: subprocess.CompletedProcess[bytes]) -> str:
        """``proc``'s stdout, asserting that it succeeded."""
        assert proc.returncode == 0, self.explain(proc)
        return proc.stdout.decode()

    def inspect(self, name: str, fmt: str) -> str:
        return self.ok(self.podman("inspect", "--format", fmt, name)).strip()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, busybox_root: Path) -> Iterator[Engine]:
    require("podman")
    require("conmon")
    assert os.access(ISOLATE_OCI, os.X_OK), f"{ISOLATE_OCI}: no runtime there"
    store = tmp_path_factory.mktemp("oci-podman")
    rootfs = tmp_path_factory.mktemp("oci-podman-image") / "root"
    shutil.copytree(busybox_root, rootfs, symlinks=True)
    (rootfs / "etc" / "isolate-image").write_text(IMAGE_MARK)
    log_file = os.environ.get("ISOLATE_TEST_OCI_LOG")
    try:
        log = add_runtime(store, RUNTIME, ISOLATE_OCI, log=Path(log_file) if log_file else None)
        import_rootfs(store, rootfs, IMAGE)
        yield Engine(store, log)
    finally:
        cleanup(store)


@pytest.fixture(autouse=True)
def log_test_name(engine: Engine, request: pytest.FixtureRequest) -> None:
    """Head the runtime's invocations by each test in the log."""
    with open(engine.log, "a") as f:
        f.write(f"##### {request.node.nodeid}\n\n")


def container_names(engine: Engine) -> dict[str, str]:
    """podman ps -a: name -> status ("Up 2 seconds", "Exited (137) ...", "Paused", "Created")."""
    out = engine.ok(engine.podman("ps", "-a", "--format", "{{.Names}}\t{{.Status}}"))
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


# --- (a) run --rm: output and exit status ------------------------------------------------------


def test_run_rm_output_and_exit_status(engine: Engine) -> None:
    proc = engine.run("--", "sh", "-c", "echo hi; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout) == (3, b"hi\n"), engine.explain(proc)
    assert b"err\n" in proc.stderr, engine.explain(proc)
    proc = engine.run("-i", "--", "sh", "-c", "read line; echo got $line", input=b"typed\n")
    assert (proc.returncode, proc.stdout) == (0, b"got typed\n"), engine.explain(proc)


def test_missing_command_exits_127(engine: Engine) -> None:
    proc = engine.run("--", "no-such-command")
    # podman maps the runtime's "executable file not found"/"no such file or directory" to 127
    assert proc.returncode == 127, engine.explain(proc)
    assert b"no-such-command" in proc.stderr, engine.explain(proc)
    proc = engine.run("--", "/no/such/file")
    assert proc.returncode == 127, engine.explain(proc)


def test_non_executable_file_exits_126(engine: Engine) -> None:
    proc = engine.run("--", "/etc/passwd")  # mode 0644: "permission denied" becomes 126
    assert proc.returncode == 126, engine.explain(proc)
    assert b"/etc/passwd" in proc.stderr, engine.explain(proc)


# --- (b) isolation seen from inside --------------------------------------------------------------


def test_isolation_inside(engine: Engine, tmp_path: Path) -> None:
    cidfile = tmp_path / "cid"
    script = (
        "echo pid=$$; tr '\\0' ' ' < /proc/1/cmdline; echo; hostname; cat /etc/isolate-image;"
        f" ls /proc | grep -c '^[0-9]'; test -e {engine.store} && echo store-visible; echo end"
    )
    proc = engine.run(f"--cidfile={cidfile}", "--", "sh", "-c", script)
    lines = engine.ok(proc).splitlines()
    cid = cidfile.read_text().strip()
    assert lines[0] == "pid=1", engine.explain(proc)  # the command is PID 1 of its own namespace
    assert lines[1].startswith("sh -c echo pid=$$"), engine.explain(proc)
    assert lines[2] == cid[:12] != os.uname().nodename, engine.explain(proc)  # podman's default hostname
    assert lines[3] + "\n" == IMAGE_MARK, engine.explain(proc)  # the root is the image
    assert int(lines[4]) <= 4, engine.explain(proc)  # sh, ls, grep (and tr's leftovers): no host process
    assert lines[5:] == ["end"], engine.explain(proc)  # the host's files are not there

    proc = engine.run("--hostname=box", "--", "sh", "-c", "hostname; echo $(cat /etc/hostname)")
    assert engine.ok(proc) == "box\nbox\n"


# --- (c) run -d, exec, stop, rm ------------------------------------------------------------------


def test_detached_exec_stop_rm(engine: Engine) -> None:
    name = "oci-detached"
    proc = engine.podman("run", "-d", "--pull=never", "--name", name, IMAGE, "sleep", "1000")
    cid = engine.ok(proc).strip()
    try:
        assert container_names(engine)[name].startswith("Up"), engine.explain(proc)
        assert engine.inspect(name, "{{.State.Status}}") == "running"
        pid = int(engine.inspect(name, "{{.State.Pid}}"))
        assert open(f"/proc/{pid}/cmdline", "rb").read() == b"sleep\x001000\x00"

        proc = engine.podman("exec", name, "sh", "-c", "echo from-exec $$; tr '\\0' ' ' < /proc/1/cmdline; exit 5")
        assert proc.returncode == 5, engine.explain(proc)
        first, pid1 = proc.stdout.decode().splitlines()
        assert first.startswith("from-exec ") and first != "from-exec 1", engine.explain(proc)
        assert pid1 == "sleep 1000 ", engine.explain(proc)  # the container's PID namespace
        proc = engine.podman("exec", "-e", "VAR=x", "-w", "/etc", name, "sh", "-c", "echo $VAR $(pwd)")
        assert engine.ok(proc) == "x /etc\n"
        proc = engine.podman("exec", "-i", name, "cat", input=b"via stdin\n")
        assert engine.ok(proc) == "via stdin\n"
        proc = engine.podman("exec", name, "no-such-command")
        assert proc.returncode == 127, engine.explain(proc)

        started = time.monotonic()
        proc = engine.podman("stop", "-t", "1", name)  # PID 1 ignores SIGTERM: SIGKILL after 1 s
        assert engine.ok(proc).strip() == name
        assert 0.9 < time.monotonic() - started < 15, engine.explain(proc)
        assert container_names(engine)[name].startswith("Exited (137)")
        assert engine.inspect(name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
        assert not os.path.exists(f"/proc/{pid}")

        proc = engine.podman("start", name)  # a stopped container starts again (a new create)
        assert engine.ok(proc).strip() == name
        assert engine.inspect(name, "{{.State.Status}}") == "running"
        proc = engine.podman("kill", "--signal", "KILL", name)
        assert engine.ok(proc).strip() == name
        assert engine.inspect(name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"

        proc = engine.podman("rm", name)
        assert engine.ok(proc).strip() == name
        assert name not in container_names(engine)
        assert not (runtime_root(engine.store, RUNTIME) / cid).exists(), "the runtime kept the state"
    finally:
        engine.podman("rm", "--force", "--time=0", name)


# --- (d) resource limits -------------------------------------------------------------------------


def test_limits_visible_inside(engine: Engine) -> None:
    limits = ("--memory=64m", "--pids-limit=32", "--cpus=0.5")
    if os.path.isdir("/sys/fs/cgroup/memory"):  # v1 (the hybrid layout): one hierarchy each
        files = ["memory/memory.limit_in_bytes", "pids/pids.max", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"]
        expected = ["67108864", "32", "50000", "100000"]
    else:  # unified
        files, expected = ["memory.max", "pids.max", "cpu.max"], ["67108864", "32", "50000 100000"]
    script = "cd /sys/fs/cgroup && cat " + " ".join(files)
    proc = engine.run(*limits, "--", "sh", "-c", script)
    assert engine.ok(proc).split("\n")[: len(expected)] == expected, engine.explain(proc)


def test_pids_limit_enforced(engine: Engine) -> None:
    # An inner shell starts sleepers until fork fails (and the shell with it); the outer one, PID 1,
    # reports how many with builtins only.  Its exit ends the PID namespace: the sleepers die too.
    loop = "n=0; while [ $n -lt 100 ]; do sleep 100 & n=$((n+1)); echo $n > /tmp/n; done; echo all"
    proc = engine.run("--pids-limit=32", "--", "sh", "-c", f"sh -c '{loop}'; read n < /tmp/n; echo forks=$n")
    out = engine.ok(proc)
    assert "all" not in out and out.startswith("forks="), engine.explain(proc)
    assert 25 <= int(out.split("=")[1]) <= 30, engine.explain(proc)  # 32 less the two shells
    assert b"can't fork" in proc.stderr, engine.explain(proc)


# --- (e) -it under a pty -------------------------------------------------------------------------


class Pty:
    """A process whose controlling terminal is a new pty; read its output, type into it."""

    def __init__(self, cmd: list[str], env: dict[str, str], rows: int = 30, cols: int = 100) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:  # setsid --ctty: a new session, with the pty as its controlling terminal
            self.proc = subprocess.Popen(
                ["setsid", "--ctty", "--wait", *cmd], stdin=slave, stdout=slave, stderr=slave, env=env
            )
        finally:
            os.close(slave)
        self.output = b""

    def expect(self, pattern: bytes, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while pattern not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: every slave descriptor is closed
                    break
                if not data:
                    break
                self.output += data
        return pattern in self.output

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_run_it_under_a_pty(engine: Engine) -> None:
    cmd, env = podman_command(engine.store, "run", "--rm", "-it", "--pull=never", IMAGE, "sh", runtime=RUNTIME)
    term = Pty(cmd, {**env, "TERM": "xterm"})
    try:
        assert term.expect(b"# "), f"no prompt: {term.output!r}\n{engine.log_tail()}"
        term.type(b"tty; stty size; echo $((6 * 7))\r")
        assert term.expect(b"42\r\n"), f"{term.output!r}\n{engine.log_tail()}"
        lines = term.output.decode(errors="replace").split("\r\n")
        ttys = [line for line in lines if line.startswith("/dev/")]
        assert ttys and ttys[0].startswith("/dev/pts/"), term.output  # the container's own pty
        assert "30 100" in lines, term.output  # podman gave it our window size
        term.type(b"exit 4\r")
    finally:
        status = term.close()
    assert status == 4, f"{term.output!r}\n{engine.log_tail()}"


def test_exec_it_under_a_pty(engine: Engine) -> None:
    name = "oci-exec-tty"
    engine.ok(engine.podman("run", "-d", "-t", "--pull=never", "--name", name, IMAGE, "sleep", "1000"))
    try:
        cmd, env = podman_command(engine.store, "exec", "-it", name, "sh", runtime=RUNTIME)
        term = Pty(cmd, {**env, "TERM": "xterm"})
        try:
            assert term.expect(b"# "), f"no prompt: {term.output!r}\n{engine.log_tail()}"
            term.type(b"tty; echo $((6 * 7))\r")
            assert term.expect(b"42\r\n"), f"{term.output!r}\n{engine.log_tail()}"
            ttys = [line for line in term.output.decode(errors="replace").split("\r\n") if line.startswith("/dev/")]
            assert ttys and ttys[0].startswith("/dev/pts/"), term.output
            term.type(b"exit 6\r")
        finally:
            status = term.close()
        assert status == 6, f"{term.output!r}\n{engine.log_tail()}"
        assert engine.inspect(name, "{{.State.Status}}") == "running"
    finally:
        engine.podman("rm", "--force", "--time=0", name)


# --- (f) pause and unpause -----------------------------------------------------------------------


def counter(pid: int) -> int:
    """The container's counter, read through its root from the host (exec needs it running): the
    number of complete lines of /tmp/count (appended to, so a freeze never leaves it half-written)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            lines = Path(f"/proc/{pid}/root/tmp/count").read_text().count("\n")
            if lines:
                return lines
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the container's counter is not there"
        time.sleep(0.02)


def freezer_state(pid: int) -> str | None:
    """The v1 freezer state of the process's cgroup (None without a v1 freezer)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/freezer{path}/freezer.state").read_text().strip()
    return None


def test_pause_unpause(engine: Engine) -> None:
    name = "oci-paused"
    loop = "while :; do echo tick >> /tmp/count; sleep 0.05; done"
    proc = engine.podman("run", "-d", "--pull=never", "--name", name, IMAGE, "sh", "-c", loop)
    engine.ok(proc)
    try:
        pid = int(engine.inspect(name, "{{.State.Pid}}"))
        first = counter(pid)
        time.sleep(0.3)
        assert counter(pid) > first, "the counter does not advance"

        engine.ok(engine.podman("pause", name))
        assert engine.inspect(name, "{{.State.Status}}") == "paused"
        assert container_names(engine)[name] == "Paused"
        assert freezer_state(pid) in ("FROZEN", None)
        frozen = counter(pid)
        time.sleep(0.5)
        assert counter(pid) == frozen, "the counter advanced while paused"
        proc = engine.podman("exec", name, "true")
        assert proc.returncode != 0, engine.explain(proc)  # podman refuses to exec in a paused one

        engine.ok(engine.podman("unpause", name))
        assert engine.inspect(name, "{{.State.Status}}") == "running"
        assert freezer_state(pid) in ("THAWED", None)
        time.sleep(0.3)
        assert counter(pid) > frozen, "the counter did not resume"

        engine.ok(engine.podman("stop", "-t", "1", name))
        engine.ok(engine.podman("rm", name))
    finally:
        engine.podman("rm", "--force", "--time=0", name)


# --- (g) user, working directory, environment ----------------------------------------------------


def test_user_workdir_env(engine: Engine) -> None:
    # podman 4.3 makes only the image's WORKDIR: --workdir must exist (root's /etc: not writable)
    script = "id -u; id -g; pwd; echo $VAR; touch ./f 2>/dev/null && echo writable || echo denied"
    proc = engine.run("--user=1000:1000", "--workdir=/etc", "-e", "VAR=x", "--", "sh", "-c", script)
    assert engine.ok(proc).splitlines() == ["1000", "1000", "/etc", "x", "denied"], engine.explain(proc)
    proc = engine.run("--", "sh", "-c", "id -u; pwd; echo $HOME; echo $PATH")
    lines = engine.ok(proc).splitlines()
    assert lines[:3] == ["0", "/", "/root"] and "/bin" in lines[3].split(":"), engine.explain(proc)


# --- (h) nothing left ----------------------------------------------------------------------------


def cgroup_procs(top: str) -> list[str]:
    found = []
    for dirpath, _, _ in os.walk(top):
        try:
            found += Path(dirpath, "cgroup.procs").read_text().split()
        except OSError:
            pass
    return found


def test_nothing_left(engine: Engine) -> None:
    # runs last: every container before it was removed by podman itself (--rm or rm)
    assert container_names(engine) == {}
    proc = engine.run("--", "true")
    engine.ok(proc)
    assert container_names(engine) == {}
    # the runtime's --root may keep caches (compiled seccomp filters...), but nothing of a container
    kept = [os.path.join(d, n) for d, dirs, files in os.walk(runtime_root(engine.store, RUNTIME)) for n in dirs + files]
    assert [k for k in kept if re.search("[0-9a-f]{64}", k)] == [], "the runtime kept removed containers' state"
    tops = store_cgroups(engine.store)
    assert tops, f"no cgroup {cgroup_parent(engine.store)}: where did the containers run?"
    for top in tops:  # conmon's (empty) cgroup stays: podman makes it once per parent
        left = [d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d)) and d != "conmon"]
        assert left == [], f"{top}: container cgroups left: {left}"
        assert cgroup_procs(top) == [], f"{top}: processes left"
    store = str(engine.store)
    assert not [m for m in mountinfo() if store in m.point or store in m.root], (
        "a mount of the store is visible on the host"
    )
