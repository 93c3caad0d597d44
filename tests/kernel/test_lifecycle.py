"""Detached sandboxes: start, list, exec, stats, stop, kill, rm, logs, wait, gc, -it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN, cli
from support.host import processes_matching, sandbox_cgroups, state_entries

from isolate.config import DEFAULT_STATE_DIR
from isolate.detached.monitor import socket_path


def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture(autouse=True)
def quiet_monitor() -> Iterator[None]:
    """Each test removes its sandboxes; then the idle monitor exits and takes its socket along."""
    yield
    for row in json.loads(cli("ps", "-a", "--json").stdout or b"[]"):
        cli("rm", "-f", row["id"])
    wait_for(lambda: not os.path.exists(socket_path(DEFAULT_STATE_DIR)), timeout=5)


def start(busybox_root: Path, *command: str, options: tuple[str, ...] = ()) -> str:
    proc = cli("run", "-d", *options, "--rootfs", str(busybox_root), "--", *command)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def test_detach_ps_exec_logs_stop_rm(busybox_root: Path) -> None:
    script = "echo ready; trap 'echo bye; exit 3' TERM; while :; do sleep 0.1; done"
    sandbox_id = start(busybox_root, "sh", "-c", script,
                       options=("--name", "web", "--memory", "64M"))  # fmt: skip
    assert len(sandbox_id) == 12
    rows = {r["name"]: r for r in json.loads(cli("ps", "--json").stdout)}
    assert rows["web"]["status"] == "running" and rows["web"]["id"] == sandbox_id
    assert rows["web"]["limits"] == {"memory": 64 << 20} and rows["web"]["memory"] > 0
    # exec: the same pid namespace (its init is PID 1), files and cgroup
    limit = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    exec_ = cli("exec", "web", "sh", "-c", f"echo $$ > /tmp/mark; ps -o pid,comm; {limit}")
    out = exec_.stdout.decode().split()
    assert exec_.returncode == 0 and "isolate-init" in out and str(64 << 20) in out
    assert cli("exec", "web", "cat", "/tmp/mark").stdout.strip().isdigit()
    assert cli("exec", "web", "sh", "-c", "exit 9").returncode == 9
    wait_for(lambda: b"ready" in cli("logs", "web").stdout)
    stop = cli("stop", "-t", "5", "web")
    assert stop.returncode == 0 and stop.stdout == b"web exited 3\n"
    assert cli("logs", "web").stdout == b"ready\nbye\n"
    assert cli("wait", "web").returncode == 3
    assert json.loads(cli("ps", "-a", "--json").stdout)[0]["status"] == "stopped"
    assert cli("rm", "web").returncode == 0
    assert json.loads(cli("ps", "-a", "--json").stdout) == []


def test_stop_kills_what_ignores_term(busybox_root: Path) -> None:
    start(busybox_root, "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done", options=("--name", "stubborn"))
    began = time.monotonic()
    proc = cli("stop", "-t", "1", "stubborn")
    assert proc.stdout == b"stubborn exited 137\n" and 1.0 <= time.monotonic() - began < 5


def test_bad_references_are_one_clear_line(busybox_root: Path) -> None:
    for args in (["exec", "nope", "true"], ["kill", "nope"], ["stop", "nope"], ["rm", "nope"], ["logs", "nope"],
                 ["wait", "nope"]):  # fmt: skip
        proc = cli(*args)
        assert proc.returncode == 125 and proc.stderr == b"isolate: nope: no such sandbox; `isolate ps -a` lists them\n"
    start(busybox_root, "sleep", "30", options=("--name", "taken"))
    clash = cli("run", "-d", "--name", "taken", "--rootfs", str(busybox_root), "--", "true")
    assert clash.returncode == 125 and b"a sandbox has that name already" in clash.stderr
    running = cli("rm", "taken")
    assert running.returncode == 125 and b"is running; stop it first, or use rm -f" in running.stderr
    cli("kill", "taken", "KILL")
    cli("wait", "taken")
    for args, words in ((["exec", "taken", "true"], b"cannot exec: the sandbox is stopped"),
                        (["kill", "taken"], b"cannot send it a signal: the sandbox is stopped")):  # fmt: skip
        proc = cli(*args)
        assert proc.returncode == 125 and words in proc.stderr and proc.stderr.count(b"\n") == 1
    assert cli("kill", "taken", "BOGUS").returncode == 125


def test_stats_move_with_memory(busybox_root: Path) -> None:
    # The host image has python3: allocate 64 MiB once a file appears.
    hog = "import os, time\nwhile not os.path.exists('/tmp/go'): time.sleep(0.02)\n"
    hog += "x = bytearray(64 << 20)\ntime.sleep(60)"
    proc = cli("run", "-d", "--name", "hog", "--", "python3", "-c", hog)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: cli("exec", "hog", "true").returncode == 0)
    before = json.loads(cli("stats", "--json", "hog").stdout)
    cli("exec", "hog", "touch", "/tmp/go")
    wait_for(lambda: json.loads(cli("stats", "--json", "hog").stdout)["memory"] > before["memory"] + (60 << 20))
    after = json.loads(cli("stats", "--json", "hog").stdout)
    assert after["pids"] >= 2 and any("python3" in p["cmdline"] for p in after["processes"])
    assert b"hog: memory" in cli("stats", "--no-stream", "hog").stdout


def test_init_reaps_zombies(busybox_root: Path) -> None:
    # An orphan whose new parent is a PID 1 that never waits stays a zombie...
    orphan = "(sleep 0.1 &); exec sleep 30"
    start(busybox_root, "sh", "-c", orphan, options=("--name", "plain", "--no-init"))
    start(busybox_root, "sh", "-c", orphan, options=("--name", "inited"))
    time.sleep(0.6)
    states = {name: cli("exec", name, "ps", "-o", "stat=").stdout.split() for name in ("plain", "inited")}
    assert b"Z" in states["plain"]
    assert b"Z" not in states["inited"]  # ...isolate's init reaps it


def test_fifty_parallel_starts(busybox_root: Path) -> None:
    procs = [subprocess.Popen([ISOLATE_BIN, "run", "-d", "--rootfs", str(busybox_root), "--", "sleep", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(50)]  # fmt: skip
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.append(out.decode().strip())
    listed = {r["id"] for r in json.loads(cli("ps", "--json").stdout) if r["status"] == "running"}
    assert len(set(ids)) == 50 and set(ids) <= listed


def the_monitor() -> int:
    # The oldest: its zygote is a fork of it, with the same command line.
    found = subprocess.run(
        ["pgrep", "-o", "-f", "from isolate.detached.monitor import serve"], capture_output=True, text=True
    )
    return int(found.stdout.split()[0])


def children_of(pid: int) -> dict[int, str]:
    """pid -> comm of the live (not zombie) children of ``pid``."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
            state, ppid = rest.split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(entry)] = comm.split("(", 1)[1]
        except (OSError, ValueError):
            pass
    return found


def test_the_monitor_clones_sandboxes_through_its_zygote(busybox_root: Path) -> None:
    first = start(busybox_root, "sleep", "100")
    second = start(busybox_root, "sleep", "100")
    monitor = the_monitor()
    kids = children_of(monitor)
    # The zygote, forked while the monitor was small, clones each sandbox with CLONE_PARENT:
    # the monitor is their parent, reaps them and reads their status, and never forks itself.
    assert sorted(kids.values()) == ["isolate-init", "isolate-init", "isolate-zygote"]
    pids = {r["id"]: r["pid"] for r in json.loads(cli("ps", "--json").stdout)}
    assert {pids[first], pids[second]} <= set(kids)
    zygote = next(p for p, comm in kids.items() if comm == "isolate-zygote")
    # It keeps none of the monitor's descriptors: its socket and /dev/null only.
    held = sorted(os.readlink(f"/proc/{zygote}/fd/{fd}").split(":")[0] for fd in os.listdir(f"/proc/{zygote}/fd"))
    assert held == ["/dev/null", "/dev/null", "/dev/null", "socket"]
    assert cli("rm", "-f", first, second).returncode == 0
    # Idle, the monitor exits and reaps its zygote on the way out.
    wait_for(lambda: gone(monitor) and gone(zygote))


def test_a_monitor_of_another_isolate_version_refuses_in_one_clear_line(
    busybox_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle
    import socket

    from isolate import Sandbox
    from isolate.detached import lifecycle, monitor
    from isolate.errors import IsolateError

    first = start(busybox_root, "sleep", "100")  # its monitor runs on, as it would across an upgrade
    state_before, cgroups_before = state_entries(), sandbox_cgroups()
    monkeypatch.setattr(monitor, "protocol", lambda: "isolate 0.0.9, plan fields old")
    with pytest.raises(IsolateError, match=r"runs 'isolate .* this client 'isolate 0.0.9, plan fields old'") as info:
        lifecycle.start_detached(Sandbox(busybox_root), ["sleep", "100"])
    assert "\n" not in str(info.value) and "isolate rm -f" in str(info.value)
    assert state_entries() == state_before and sandbox_cgroups() == cgroups_before  # nothing half-made
    # A client of an older version sends its plan bare: refused before it is unpickled.
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(socket_path(DEFAULT_STATE_DIR))
        null = os.open(os.devnull, os.O_RDWR)
        try:
            socket.send_fds(sock, [pickle.dumps(("start", object(), {}))], [null, null, null])
        finally:
            os.close(null)
        reply = pickle.loads(sock.recv(1 << 16))
    assert reply[0] == "error" and "another isolate version" in str(reply[1])
    assert [r["id"] for r in json.loads(cli("ps", "--json").stdout)] == [first]  # it served on


def test_a_client_explains_a_monitor_that_fails_on_its_request(tmp_path: Path) -> None:
    import pickle
    import socket
    import threading

    from isolate.detached import monitor
    from isolate.errors import IsolateError

    # An older monitor unpacks the request its own way and fails with what that raises.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path(str(tmp_path)))
    listener.listen()

    def old_monitor() -> None:
        conn, _ = listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            for fd in fds:
                os.close(fd)
            conn.send(pickle.dumps(("error", ValueError("too many values to unpack (expected 3)"))))

    thread = threading.Thread(target=old_monitor)
    thread.start()
    try:
        with pytest.raises(IsolateError, match=r"failed to take the sandbox \(ValueError: too many values.*"
                           r"another version of isolate"):  # fmt: skip
            monitor.start_detached(str(tmp_path), object(), {}, (0, 1, 2))  # type: ignore[arg-type]
    finally:
        thread.join()
        listener.close()


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (the exited monitor's parent is PID 1, whose reaping
    is not this test's business)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it was reaped between open and read
        return True


def test_killed_monitor_leaves_state_that_gc_removes(busybox_root: Path, marker: str) -> None:
    cgroups_before, state_before = sandbox_cgroups(), state_entries()
    for _ in range(3):
        start(busybox_root, "sh", "-c", "sleep 100; true", marker)
    monitor = the_monitor()
    os.kill(monitor, signal.SIGKILL)  # the supervisor of every detached sandbox dies
    wait_for(lambda: processes_matching(marker) == [])  # PR_SET_PDEATHSIG ended them
    rows = json.loads(cli("ps", "-a", "--json").stdout)
    assert [r["status"] for r in rows] == ["dead", "dead", "dead"]  # not "running": ps does not lie
    gc = cli("gc")
    assert gc.returncode == 0 and gc.stdout.count(b"dead") == 3
    assert json.loads(cli("ps", "-a", "--json").stdout) == []
    assert sandbox_cgroups() == cgroups_before
    assert state_entries() - state_before == set()


def test_killed_start_is_collected(busybox_root: Path) -> None:
    from isolate import _state as state

    # A `run -d` killed after writing its record and before the monitor took over.
    record = {"id": "0123456789ab", "name": "halfway", "status": "created", "created": time.time(),
              "creator": 2**22 + 7, "creator_start": 1, "command": ["true"]}  # fmt: skip
    state.write_record(DEFAULT_STATE_DIR, record)
    assert json.loads(cli("ps", "-a", "--json").stdout)[0]["status"] == "dead"
    assert b"sandbox 0123456789ab (halfway, dead)" in cli("gc").stdout
    # An unnamed `run -d` killed before the monitor wrote the first record: a directory
    # with only the log.  While a start holds its lock, gc leaves it; once free, it goes.
    directory = state.record_dir(DEFAULT_STATE_DIR, "ba9876543210")
    os.makedirs(directory)
    open(os.path.join(directory, "log"), "w").close()
    held = state.lock_directory(directory)
    assert b"ba9876543210" not in cli("gc").stdout
    os.close(held)  # its client was killed before the monitor took the lock over
    assert b"sandbox ba9876543210 (start interrupted, no record)" in cli("gc").stdout
    assert not os.path.exists(directory)


def drive_terminal(argv: list[str], line: bytes, rows: int = 33, cols: int = 101) -> tuple[str, int]:
    """Run ``argv`` under a real pty of the given size, type ``line`` at the shell's first
    prompt, and return (everything shown, exit status)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    typed = False
    out = b""
    status = -1
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.5)[0]:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pid = 0
                    break
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
            if b"\x1b[6n" in chunk:  # busybox's line editor asks where the cursor is; answer as a terminal
                os.write(fd, b"\x1b[1;1R")
            if not typed and b"# " in out:
                os.write(fd, line)
                typed = True
    finally:
        if pid:
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace").replace("\r", ""), os.waitstatus_to_exitcode(status) if status >= 0 else -1


def test_run_it_under_a_real_terminal(busybox_root: Path) -> None:
    text, code = drive_terminal(
        [ISOLATE_BIN, "run", "-it", "--rootfs", str(busybox_root), "--", "sh"],
        b"tty; echo pid=$$; stty size; sleep 30 &\njobs; kill %1; echo done; exit 4\n",
    )
    assert "pid=1" in text and "33 101" in text  # PID 1, and the window size of the caller's terminal
    assert "\n/dev/pts/0" in text, text  # a pty of the sandbox's own devpts, which tty can name
    assert "Running" in text and "sleep 30" in text and "done" in text  # job control: jobs lists the job
    assert code == 4, text


def test_exec_it_under_a_real_terminal(busybox_root: Path) -> None:
    start(busybox_root, "sleep", "30", options=("--name", "tty-target"))
    text, code = drive_terminal([ISOLATE_BIN, "exec", "-it", "tty-target", "sh"],
                                b"tty; stty size; echo $((6 * 7)); exit 5\n", rows=21, cols=77)  # fmt: skip
    cli("rm", "-f", "tty-target")
    assert "\n/dev/pts/0" in text and "21 77" in text and "\n42" in text, text
    assert code == 5, text


def test_net_connect(busybox_root: Path) -> None:
    start(busybox_root, "sleep", "30", options=("--name", "net-a"))
    start(busybox_root, "sleep", "30", options=("--name", "net-b"))
    connected = cli("net", "connect", "--subnet", "10.214.0.0/30", "net-a", "net-b")
    assert connected.stdout == b"net-a 10.214.0.1\nnet-b 10.214.0.2\n", connected.stderr
    assert b"1 packets received" in cli("exec", "net-a", "ping", "-c", "1", "-W", "2", "10.214.0.2").stdout
    again = cli("net", "connect", "net-a", "net-b")
    assert again.returncode == 125 and again.stderr.startswith(b"isolate: netlink refused the veth pair")
    assert again.stderr.count(b"\n") == 1
    bad = cli("net", "connect", "--subnet", "10.214.0.0/32", "net-a", "net-b")
    assert bad.returncode == 125 and b"needs room for two addresses" in bad.stderr


def test_a_signal_to_exec_at_any_moment_never_leaves_its_command_running(busybox_root: Path, marker: str) -> None:
    """SIGTERM to `isolate exec` while it starts: it dies before the fork, or the command gets the
    signal (the relay holds it until the command's pid is known); never a command left running."""
    import random

    sandbox_id = start(busybox_root, "sleep", "100")
    rng = random.Random(1707)
    outcomes = set()
    for _ in range(30):
        proc = subprocess.Popen([ISOLATE_BIN, "exec", sandbox_id, "sh", "-c", f"sleep 50; echo {marker}"])
        time.sleep(rng.uniform(0.0, 0.15))  # python start, click, the fork, the exec: all in here
        proc.send_signal(signal.SIGTERM)
        outcomes.add(proc.wait(timeout=20))
        wait_for(lambda: processes_matching(marker) == [], timeout=5)
    assert outcomes <= {-signal.SIGTERM, 128 + signal.SIGTERM}, outcomes
    assert cli("rm", "-f", sandbox_id).returncode == 0
