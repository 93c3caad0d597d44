"""What a command sees inside a sandbox, checked from inside and from the host."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate import Limits, Sandbox


def sh(sandbox: Sandbox, script: str, **kw: object) -> tuple[int, str, str]:
    result = sandbox.run(["/bin/sh", "-c", script], capture=True, **kw)  # type: ignore[arg-type]
    return result.exit_code, (result.stdout or b"").decode(), (result.stderr or b"").decode()


@pytest.mark.parametrize("image", ["host", "busybox"])
def test_command_is_pid_1(image: str, busybox_root: Path) -> None:
    sandbox = Sandbox(busybox_root if image == "busybox" else None)
    assert sh(sandbox, "echo $$")[:2] == (0, "1\n")


def test_ps_sees_only_the_sandbox(busybox_root: Path) -> None:
    code, out, _ = sh(
        Sandbox(busybox_root), "sleep 5 & until grep -q sleep /proc/$!/cmdline; do :; done; ps -o pid,args; kill $!"
    )
    rows = [line.split(None, 1) for line in out.strip().splitlines()[1:]]
    assert code == 0
    assert [pid for pid, _ in rows][:2] == ["1", "2"] and len(rows) == 3  # grep took pid 3 and is gone
    assert rows[0][1].startswith("/bin/sh -c") and rows[1][1].endswith("sleep 5") and "ps -o" in rows[2][1]


def test_proc_lists_only_sandbox_pids(busybox_root: Path) -> None:
    _, out, _ = sh(Sandbox(busybox_root), "ls /proc | grep -E '^[0-9]+$'")
    assert set(out.split()) <= {"1", "2", "3", "4"}


def test_hostname_is_private(busybox_root: Path) -> None:
    before = socket.gethostname()
    # sethostname needs CAP_SYS_ADMIN, which the default set drops (as docker's does)
    sandbox = Sandbox(busybox_root, hostname="box", cap_add=["SYS_ADMIN"])
    code, out, _ = sh(sandbox, "hostname; hostname changed; hostname")
    assert (code, out) == (0, "box\nchanged\n")
    assert socket.gethostname() == before


def test_default_hostname_is_the_sandbox_id(busybox_root: Path) -> None:
    result = Sandbox(busybox_root).run(["hostname"], capture=True)
    assert result.stdout == f"{result.sandbox_id}\n".encode()


def test_network_is_loopback_only() -> None:
    code, out, _ = sh(Sandbox(), "ls /sys/class/net; ip -o link")
    lines = out.split("\n")
    assert code == 0
    assert lines[0] == "lo"
    links = [line for line in out.splitlines() if ": " in line]
    assert len(links) == 1 and links[0].split(": ")[1] == "lo" and "UP" in links[0]


def test_loopback_works(busybox_root: Path) -> None:
    code, out, _ = sh(Sandbox(busybox_root), "ping -c 1 -W 2 127.0.0.1 >/dev/null && echo reached")
    assert (code, out) == (0, "reached\n")


def test_net_host_keeps_host_interfaces() -> None:
    _, out, _ = sh(Sandbox(net="host"), "ls /sys/class/net")
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


def test_share_pid_keeps_host_pid_namespace(busybox_root: Path) -> None:
    code, out, _ = sh(Sandbox(busybox_root, share=["pid"]), "echo $$")
    assert code == 0 and out.strip() != "1"


def test_ipc_namespace_is_private(busybox_root: Path) -> None:
    inside = os.readlink("/proc/self/ns/ipc")
    _, out, _ = sh(Sandbox(busybox_root), "readlink /proc/self/ns/ipc")
    assert out.strip() != inside


def test_dev_is_minimal(busybox_root: Path) -> None:
    _, out, _ = sh(Sandbox(busybox_root), "ls -A /dev")
    assert sorted(out.split()) == sorted(
        [
            "fd",
            "full",
            "mqueue",
            "null",
            "ptmx",
            "pts",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "tty",
            "urandom",
            "zero",
        ]
    )
    code, out, _ = sh(Sandbox(busybox_root), "head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null && echo ok")
    assert (code, out.split()) == (0, ["00", "00", "00", "00", "ok"])


def test_sys_is_read_only(busybox_root: Path) -> None:
    # mkdir in sysfs fails with EPERM when writable and EROFS when the mount is read-only;
    # either way nothing on the host changes.
    code, _, err = sh(Sandbox(busybox_root), "mkdir /sys/isolate-probe")
    assert code != 0 and "Read-only file system" in err


def test_tmp_is_a_fresh_tmpfs(busybox_root: Path) -> None:
    _, out, _ = sh(Sandbox(busybox_root), "grep ' /tmp ' /proc/mounts; ls -A /tmp | wc -l")
    assert out.split()[2] == "tmpfs" and out.split()[-1] == "0"


def test_host_image_has_host_programs_read_only() -> None:
    code, out, err = sh(Sandbox(), "python3 -c 'print(6*7)'; touch /usr/isolate-probe")
    assert code != 0 and out == "42\n" and "Read-only file system" in err
    assert not os.path.exists("/usr/isolate-probe")


def test_host_image_hides_host_secrets() -> None:
    code, out, _ = sh(Sandbox(), "ls /etc/shadow /root /home /work 2>&1; true")
    assert "/etc/shadow" in out and "No such file" in out
    assert not any(line.startswith("/work") and "No such" not in line for line in out.splitlines())


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A directory a user namespace's root can reach (pytest's tmp_path is 0700, host root's)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="isolate-userns-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_user_namespace_maps_root_to_an_unprivileged_id(open_dir: Path) -> None:
    secret = open_dir / "secret"
    secret.write_text("host root only\n")
    secret.chmod(0o600)
    script = "id -u; cat /proc/self/uid_map; touch /data/made-inside; cat /data/secret"
    result = Sandbox(userns=True, volumes=[f"{open_dir}:/data"]).run(["sh", "-c", script], capture=True)
    out = (result.stdout or b"").decode().split()
    assert out[0] == "0" and out[1] == "0" and int(out[2]) >= 1000  # root inside, an ordinary id outside
    outside = int(out[2])
    assert (open_dir / "made-inside").stat().st_uid == outside
    # the host's root is nobody to the sandbox's root: its private files stay private
    assert result.exit_code != 0 and b"Permission denied" in (result.stderr or b"")
    assert (
        Sandbox(volumes=[f"{open_dir}:/data"]).run(["cat", "/data/secret"], capture=True).stdout == b"host root only\n"
    )


def test_user_namespace_keeps_limits_and_defences() -> None:
    # The parent moves the child into its cgroup (the cgroup's files are the host root's).
    hog = Sandbox(userns=True, limits=Limits(memory="32M", memory_swap="32M")).run(
        ["python3", "-c", "bytearray(128 << 20)"])  # fmt: skip
    assert hog.status == "oom-killed"
    status = Sandbox(userns=True).run(["grep", "-E", "NoNewPrivs|Seccomp:", "/proc/self/status"], capture=True)
    assert (status.stdout or b"").split() == [b"NoNewPrivs:", b"1", b"Seccomp:", b"2"]


def test_rootless_limits_need_a_delegated_cgroup() -> None:
    """A user's sandboxes get limits in a cgroup v2 subtree delegated to it (as systemd's Delegate=yes)."""
    import json
    import shutil
    import subprocess

    from support.commands import ISOLATE_BIN

    from isolate import cgroups

    lay = cgroups.layout()
    nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups"
    run = f"{nobody} {ISOLATE_BIN} run --json --memory 32M --memory-swap 32M -- python3 -c 'bytearray(128 << 20)'"
    state_existed = os.path.exists("/tmp/isolate-65534")
    if lay.kind != "v2":  # nothing can be delegated on v1: one clear line
        proc = subprocess.run(["sh", "-c", run], capture_output=True, cwd="/", timeout=60)
        assert proc.returncode == 125 and proc.stderr.startswith(b"isolate: rootless runs have no cgroup here")
        if not state_existed:
            shutil.rmtree("/tmp/isolate-65534", ignore_errors=True)
        return
    deleg = Path(lay.v2_mount) / f"isolate-test-deleg-{os.getpid()}"
    session = deleg / "session"
    try:
        session.mkdir(parents=True)
        for d in (deleg, session):  # what delegation hands over (cgroup-v2.rst, "Delegation")
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(d / name if name else d, 65534, 65534)
        # the user's process sits in a leaf of its subtree, the sandboxes go beside it
        proc = subprocess.run(["sh", "-c", f"echo $$ > {session}/cgroup.procs && exec {run}"], capture_output=True,
                              cwd="/", timeout=120)  # fmt: skip
        result = json.loads(proc.stdout.decode().splitlines()[-1])
        assert proc.returncode == 137 and result["status"] == "oom-killed" and result["cgroup"] == "v2", proc.stderr
        assert os.listdir(deleg / "isolate") and not [d for d in os.listdir(deleg / "isolate")
                                                       if (deleg / "isolate" / d).is_dir()]  # fmt: skip
    finally:
        for d in (deleg / "isolate", session, deleg):
            if d.exists():
                d.rmdir()
        if not state_existed:
            shutil.rmtree("/tmp/isolate-65534", ignore_errors=True)
