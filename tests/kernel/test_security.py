"""Escape attempts from a default sandbox fail; under --privileged the same attempts get through.

Every probe is harmless to the host even when a defence is missing: syscalls are made
with invalid arguments and judged by errno (EPERM: denied; EINVAL, ENOSYS, ESRCH...: the
kernel looked at the arguments, so the call was allowed), devices are read and never
written, and what a probe may change (a mount, a hostname) lives in the sandbox's own
namespaces.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from support.commands import cli

from isolate import ConfigError, Sandbox

NR = {  # syscall numbers of the probes, per architecture (asm/unistd.h)
    "x86_64": {"init_module": 175, "bpf": 321, "keyctl": 250, "ptrace": 101, "clock_settime": 227,
               "perf_event_open": 298, "kexec_load": 246},
    "aarch64": {"init_module": 105, "bpf": 280, "keyctl": 219, "ptrace": 117, "clock_settime": 112,
                "perf_event_open": 241, "kexec_load": 104},
}[os.uname().machine]  # fmt: skip

PROBE = """
import ctypes, errno, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
NR = json.loads(sys.argv[1])
disk = int(sys.argv[2])
out = {}

def err(ret):
    return 0 if ret >= 0 else ctypes.get_errno()

def syscall(name, *args):
    return err(libc.syscall(NR[name], *args))

# invalid arguments everywhere: a call that gets through fails on them, harmlessly
out["init_module"] = syscall("init_module", None, 0, b"")            # EFAULT/ENOSYS if allowed
out["kexec_load"] = syscall("kexec_load", 0, 0, None, 0xFFFF)         # EINVAL if allowed
out["bpf"] = syscall("bpf", 0xFFFF, None, 0)                          # EINVAL if allowed
out["keyctl"] = syscall("keyctl", 0xFFFF, 0, 0, 0, 0)                 # EOPNOTSUPP if allowed
out["ptrace"] = syscall("ptrace", 16, 0x3FFFFFFF, 0, 0)               # ESRCH if allowed (no such pid)
out["perf_event_open"] = syscall("perf_event_open", None, -1, -1, -1, 0)  # EFAULT if allowed
ts = (ctypes.c_long * 2)(0, 2_000_000_000)                            # tv_nsec out of range
out["clock_settime"] = syscall("clock_settime", 0, ts)                # EINVAL if allowed
out["mount"] = err(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None))  # the sandbox's own namespace
out["remount_root_rw"] = err(libc.mount(None, b"/", None, 32 | 4096, None))  # MS_REMOUNT|MS_BIND
try:
    os.mknod("/dev/probe-disk", stat.S_IFBLK | 0o600, disk)            # the host's root disk
    out["mknod_host_disk"] = 0
    with open("/dev/probe-disk", "rb") as f:                          # read, never write
        out["read_host_disk"] = len(f.read(512))
except OSError as exc:
    out.setdefault("mknod_host_disk", exc.errno)
    out["read_host_disk"] = exc.errno
try:
    with open("/proc/sys/kernel/domainname") as f:                    # a UTS-namespaced sysctl
        value = f.read()
    with open("/proc/sys/kernel/domainname", "w") as f:
        f.write(value)                                                # its own value back
    out["write_sysctl"] = 0
except OSError as exc:
    out["write_sysctl"] = exc.errno
out["timer_list"] = len(open("/proc/timer_list").read())              # masked: /dev/null
try:
    os.kill(int(sys.argv[3]), 0)                                      # signal 0: a check, nothing sent
    out["kill_host_process"] = 0
except OSError as exc:
    out["kill_host_process"] = exc.errno
out["proc1_root"] = sorted(os.listdir("/proc/1/root"))
out["no_new_privs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
out["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
out["unshare_user"] = err(libc.unshare(0x10000000))                   # last: it changes this process
print(json.dumps(out))
"""


def probe(**options: object) -> dict[str, object]:
    disk = os.stat("/").st_dev
    argv = ["python3", "-c", PROBE, json.dumps(NR), str(disk), str(os.getpid())]
    result = Sandbox(**options).run(argv, capture=True)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout or b"{}")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def default() -> dict[str, object]:
    return probe(read_only=True)


@pytest.fixture(scope="module")
def privileged() -> dict[str, object]:
    return probe(read_only=True, privileged=True)


DENIED_SYSCALLS = ["init_module", "kexec_load", "bpf", "keyctl", "ptrace", "perf_event_open", "clock_settime",
                   "mount", "remount_root_rw", "unshare_user"]  # fmt: skip


@pytest.mark.parametrize("name", DENIED_SYSCALLS)
def test_denied_by_default_allowed_when_privileged(name: str, default: dict[str, object],
                                                   privileged: dict[str, object]) -> None:  # fmt: skip
    assert default[name] == errno.EPERM, f"{name}: {errno.errorcode.get(default[name], default[name])}"  # type: ignore[call-overload]
    assert privileged[name] != errno.EPERM  # the kernel got to look at the arguments


def test_no_block_device_no_host_disk(default: dict[str, object], privileged: dict[str, object]) -> None:
    # Without CAP_MKNOD no node of the host's disk can be made, so nothing can read it.  Under
    # --privileged the node is made; whether it can then be read depends on the host (these
    # machines refuse even the host's root), so only the mknod is asserted there.
    assert default["mknod_host_disk"] == errno.EPERM and default["read_host_disk"] == errno.EPERM
    assert privileged["mknod_host_disk"] == 0


def test_proc_sys_is_read_only(default: dict[str, object], privileged: dict[str, object]) -> None:
    assert default["write_sysctl"] == errno.EROFS
    assert privileged["write_sysctl"] == 0


def test_masked_paths(default: dict[str, object], privileged: dict[str, object]) -> None:
    assert default["timer_list"] == 0
    assert privileged["timer_list"] > 0  # type: ignore[operator]


def test_no_new_privs_and_capabilities(default: dict[str, object], privileged: dict[str, object]) -> None:
    assert default["no_new_privs"] == "1" and privileged["no_new_privs"] == "0"
    effective = int(str(default["cap_eff"]), 16)
    assert not effective & (1 << 21)  # CAP_SYS_ADMIN
    assert not effective & (1 << 27)  # CAP_MKNOD
    assert effective & (1 << 18)  # CAP_SYS_CHROOT, kept as docker does
    assert int(str(privileged["cap_eff"]), 16) & (1 << 21)


def test_proc_1_root_is_the_sandbox(default: dict[str, object]) -> None:
    root = default["proc1_root"]
    assert isinstance(root, list) and "usr" in root and "work" not in root and "old_root" not in root


def test_cap_add_and_drop(busybox_root: Path) -> None:
    status = Sandbox(busybox_root, cap_add=["NET_ADMIN"], cap_drop=["CHOWN"]).run(
        ["grep", "CapEff", "/proc/self/status"], capture=True)  # fmt: skip
    effective = int((status.stdout or b"").split()[1], 16)
    assert effective & (1 << 12) and not effective & (1 << 0)  # NET_ADMIN in, CHOWN out
    with pytest.raises(ConfigError, match="no such capability"):
        Sandbox(busybox_root, cap_add=["FLY"]).run(["true"])


def test_non_root_user_has_no_capabilities(busybox_root: Path) -> None:
    out = Sandbox(busybox_root, user="1000").run(["grep", "CapEff", "/proc/self/status"], capture=True).stdout
    assert (out or b"").split()[1] == b"0000000000000000"


def test_seccomp_unconfined_and_profile(busybox_root: Path, tmp_path: Path) -> None:
    probe_mkdir = ["sh", "-c", "grep Seccomp: /proc/self/status"]
    assert Sandbox(busybox_root, seccomp="unconfined").run(probe_mkdir, capture=True).stdout == b"Seccomp:\t0\n"
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}))  # fmt: skip
    result = Sandbox(busybox_root, seccomp=str(profile)).run(["mkdir", "/tmp/x"], capture=True)
    assert result.exit_code != 0 and b"Permission denied" in (result.stderr or b"")


def test_ulimit_and_oom_score_adj(busybox_root: Path) -> None:
    result = Sandbox(busybox_root, ulimits=["nofile=512:1024", "core=0"], oom_score_adj=500).run(
        ["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c; cat /proc/self/oom_score_adj"], capture=True)  # fmt: skip
    assert (result.stdout or b"").split() == [b"512", b"1024", b"0", b"500"]


@pytest.mark.parametrize("args,message", [
    (["--ulimit", "nofiles=1"], "isolate: --ulimit 'nofiles=1': expected NAME=SOFT[:HARD]"),
    (["--ulimit", "nofile=9:1"], "isolate: --ulimit 'nofile=9:1': the soft limit is above the hard one"),
    (["--oom-score-adj", "5000"], "isolate: --oom-score-adj '5000': choose a whole number from -1000 to 1000"),
    (["--cap-add", "FLY"], "isolate: --cap-add 'FLY': no such capability"),
    (["--seccomp", "/nonexistent.json"], "isolate: --seccomp /nonexistent.json: cannot read a JSON profile"),
])  # fmt: skip
def test_bad_security_options(args: list[str], message: str) -> None:
    proc = cli("run", *args, "--", "true")
    assert proc.returncode == 125 and proc.stderr.decode().startswith(message), proc.stderr


def test_exec_gets_the_same_defences(busybox_root: Path) -> None:
    proc = cli("run", "-d", "--name", "guarded", "--rootfs", str(busybox_root), "--", "sleep", "30")
    assert proc.returncode == 0, proc.stderr
    try:
        status = cli("exec", "guarded", "grep", "-E", "CapEff|NoNewPrivs|Seccomp:", "/proc/self/status").stdout
        fields = dict(line.split(":\t") for line in status.decode().splitlines())
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        assert not int(fields["CapEff"], 16) & (1 << 21)  # no CAP_SYS_ADMIN
        mount = cli("exec", "guarded", "mount", "-t", "tmpfs", "none", "/mnt")
        assert mount.returncode != 0
    finally:
        cli("rm", "-f", "guarded")
        import time

        from isolate.config import DEFAULT_STATE_DIR
        from isolate.detached.monitor import socket_path

        deadline = time.monotonic() + 5
        while os.path.exists(socket_path(DEFAULT_STATE_DIR)) and time.monotonic() < deadline:
            time.sleep(0.05)


def test_host_processes_are_out_of_reach(default: dict[str, object], privileged: dict[str, object]) -> None:
    # The pid namespace: this test's own pid names nothing inside, privileged or not.
    assert default["kill_host_process"] == errno.ESRCH and privileged["kill_host_process"] == errno.ESRCH


def test_setuid_binary_grants_nothing(tmp_path: Path) -> None:
    """A setuid-root copy of python run by user 1000: no_new_privs keeps its euid at 1000."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="isolate-suid-", dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        binary = folder / "python-suid"
        shutil.copy("/usr/bin/python3", binary)
        binary.chmod(0o4755)
        argv = ["/data/python-suid", "-c", "import os; print(os.geteuid())"]
        default = Sandbox(user="1000", volumes=[f"{folder}:/data:ro"]).run(argv, capture=True)
        privileged = Sandbox(user="1000", privileged=True, volumes=[f"{folder}:/data:ro"]).run(argv, capture=True)
        assert default.stdout == b"1000\n", default.stderr
        assert privileged.stdout == b"0\n", privileged.stderr  # what no_new_privs prevents
    finally:
        shutil.rmtree(folder)
