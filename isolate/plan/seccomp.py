"""seccomp: refuse the syscalls a sandbox has no business making (seccomp(2), docker's profile's spirit).

The rules are compiled to a BPF program by libseccomp (through pyseccomp) once per profile
and cached under ``<state_dir>/seccomp/``; a run only loads the cached program with one
prctl(PR_SET_SECCOMP): importing pyseccomp costs more than a whole sandbox start.

The default filter allows everything but what follows, which fails with EPERM:
module loading, kexec, mounting, keyrings, bpf, ptrace and cross-process memory access,
perf events, clock and time changes, swap, reboot, accounting, quotas, open-by-handle,
userfaultfd, and new user namespaces (unshare or clone with CLONE_NEWUSER; clone3 fails
with ENOSYS, so that C libraries fall back to clone, whose flags can be checked).
``--seccomp FILE`` loads a docker / OCI seccomp profile instead; ``--seccomp unconfined``
loads none.
"""

from __future__ import annotations

import ctypes
import errno
import os

from isolate import _libc
from isolate.errors import ConfigError
from isolate.plan.steps import Step

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWUSER = 0x10000000
DENIED = [
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick", "open_tree", "move_mount",
    "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "ptrace", "process_vm_readv",
    "process_vm_writev", "perf_event_open", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at",
    "userfaultfd", "lookup_dcookie", "setns", "syslog", "vhangup", "iopl", "ioperm",
]  # fmt: skip

# A profile is a JSON-able dict: {"default": action, "rules": [[action, syscall, [[index, op, value, mask]...]]]}
DEFAULT_PROFILE: dict[str, Any] = {
    "default": ["allow"],
    "rules": [[["errno", errno.EPERM], name, []] for name in DENIED]
    + [
        [["errno", errno.EPERM], "unshare", [[0, "masked_eq", CLONE_NEWUSER, CLONE_NEWUSER]]],
        [["errno", errno.EPERM], "clone", [[0, "masked_eq", CLONE_NEWUSER, CLONE_NEWUSER]]],
        [["errno", errno.ENOSYS], "clone3", []],
    ],
}


def load_docker_profile(path: str) -> dict[str, Any]:
    """A docker / OCI runtime-spec seccomp profile as our profile dict."""
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--seccomp {path}: cannot read a JSON profile ({exc})") from None
    return profile_from_doc(doc, f"--seccomp {path}")


def profile_from_doc(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """A docker profile or an OCI ``linux.seccomp`` object (the same fields) as our profile dict."""

    def action(name: str, errno_ret: int | None) -> list[Any]:
        name = name.upper()
        if name == "SCMP_ACT_ALLOW":
            return ["allow"]
        if name == "SCMP_ACT_ERRNO":
            return ["errno", errno_ret if errno_ret is not None else errno.EPERM]
        if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"):
            return ["kill"]
        if name == "SCMP_ACT_LOG":
            return ["log"]
        raise ConfigError(f"{where}: action {name} is not supported; use ALLOW, ERRNO, KILL or LOG")

    ops = {"SCMP_CMP_EQ": "eq", "SCMP_CMP_NE": "ne", "SCMP_CMP_LT": "lt", "SCMP_CMP_LE": "le", "SCMP_CMP_GT": "gt",
           "SCMP_CMP_GE": "ge", "SCMP_CMP_MASKED_EQ": "masked_eq"}  # fmt: skip
    try:
        profile: dict[str, Any] = {"default": action(doc["defaultAction"], doc.get("defaultErrnoRet")), "rules": []}
        for group in doc.get("syscalls") or []:
            args = [[a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)] for a in group.get("args") or []]
            for name in group.get("names") or [group.get("name")]:
                profile["rules"].append([action(group["action"], group.get("errnoRet")), name, args])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not a seccomp profile (missing {exc})") from None
    return profile


def compile_profile(profile: dict[str, Any]) -> bytes:
    """The BPF program of a profile, by libseccomp."""
    import tempfile

    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # pyseccomp raises when libseccomp.so.2 is missing
        from isolate.errors import HostSupportError

        raise HostSupportError(
            f"seccomp needs libseccomp (apt-get install libseccomp2) and pyseccomp ({exc}); "
            "or run with --seccomp unconfined"
        ) from None

    def act(spec: list[Any]) -> int:
        kind = spec[0]
        return int({"allow": sc.ALLOW, "kill": sc.KILL_PROCESS, "log": sc.LOG}.get(kind) or sc.ERRNO(spec[1]))

    ops = {"eq": sc.EQ, "ne": sc.NE, "lt": sc.LT, "le": sc.LE, "gt": sc.GT, "ge": sc.GE, "masked_eq": sc.MASKED_EQ}
    filt = sc.SyscallFilter(act(profile["default"]))
    for spec, name, args in profile["rules"]:
        try:
            sc.resolve_syscall(sc.Arch.NATIVE, name)
        except Exception:  # noqa: BLE001 - a syscall this architecture does not have
            continue
        conditions = [
            sc.Arg(i, ops[op], value, mask) if op == "masked_eq" else sc.Arg(i, ops[op], value)
            for i, op, value, mask in args
        ]
        filt.add_rule(act(spec), name, *conditions)
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def cached_program(state_dir: str, profile: dict[str, Any]) -> str:
    """Path of the compiled program for ``profile``, compiling it on first use."""
    # repr, not json.dumps, and the builtin _sha256 rather than hashlib: json and OpenSSL's
    # hashlib cost ~10 ms of import on every `isolate run` (the rules are built in a fixed order).
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # Python 3.12+: _sha2
        from hashlib import sha256
    key = sha256(repr(profile).encode() + os.uname().machine.encode()).hexdigest()
    path = os.path.join(state_dir, "seccomp", key[:32] + ".bpf")
    if not os.path.exists(path):
        program = compile_profile(profile)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        # one temporary name per writer: two threads of one process compiling the same profile
        # at once (a fresh state directory) wrote one file, and a run could read it empty
        tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}"
        with open(tmp, "wb") as f:
            f.write(program)
        os.rename(tmp, path)
    return path


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LoadSeccomp(Step):
    """Install the compiled filter: the last step, after every mount and the user switch."""

    __slots__ = ("program",)
    what = "loading the seccomp filter"

    def __init__(self, program: bytes) -> None:
        self.program = program

    def apply(self, root: str) -> None:
        buf = ctypes.create_string_buffer(self.program, len(self.program))
        prog = _SockFprog(len(self.program) // 8, ctypes.addressof(buf))  # struct sock_filter: 8 bytes
        _libc.prctl(22, 2, ctypes.addressof(prog))  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

    def shell(self, root: str) -> str:
        return f"# seccomp: load a {len(self.program) // 8}-instruction BPF filter (prctl PR_SET_SECCOMP)"
