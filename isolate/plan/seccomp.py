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
    except RecursionError:
        raise ConfigError(f"--seccomp {path}: JSON nested too deeply; not a seccomp profile") from None
    return profile_from_doc(doc, f"--seccomp {path}")


def profile_from_doc(doc: Any, where: str) -> dict[str, Any]:
    """A docker profile or an OCI ``linux.seccomp`` object (the same fields) as our profile dict.

    Every field read is checked for its type and range here (the document comes from outside),
    so that compiling the profile meets only what libseccomp itself may refuse.
    """

    def action(name: Any, errno_ret: Any, field: str) -> list[Any]:
        if not isinstance(name, str):
            raise ConfigError(f"{where}: {field} {_shown(name)} is not an action; use SCMP_ACT_ALLOW, _ERRNO, ...")
        if errno_ret is not None and not _integer(errno_ret, 0, 4095):
            raise ConfigError(f"{where}: errnoRet {_shown(errno_ret)} of {field}: use an errno from 0 to 4095")
        name = name.upper()
        if name == "SCMP_ACT_ALLOW":
            return ["allow"]
        if name == "SCMP_ACT_ERRNO":
            return ["errno", errno_ret if errno_ret is not None else errno.EPERM]
        if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"):
            return ["kill"]
        if name == "SCMP_ACT_LOG":
            return ["log"]
        raise ConfigError(f"{where}: action {_shown(name)} is not supported; use ALLOW, ERRNO, KILL or LOG")

    ops = {"SCMP_CMP_EQ": "eq", "SCMP_CMP_NE": "ne", "SCMP_CMP_LT": "lt", "SCMP_CMP_LE": "le", "SCMP_CMP_GT": "gt",
           "SCMP_CMP_GE": "ge", "SCMP_CMP_MASKED_EQ": "masked_eq"}  # fmt: skip
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: not a seccomp profile (expected a JSON object)")
    if "defaultAction" not in doc:
        raise ConfigError(f"{where}: not a seccomp profile (defaultAction is missing)")
    profile: dict[str, Any] = {"default": action(doc["defaultAction"], doc.get("defaultErrnoRet"), "defaultAction"),
                               "rules": []}  # fmt: skip
    groups = doc.get("syscalls") or []
    if not isinstance(groups, list):
        raise ConfigError(f"{where}: syscalls is not a list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise ConfigError(f"{where}: syscalls[{i}] is not an object")
        names = group.get("names") or [group.get("name")]
        if not isinstance(names, list) or not all(isinstance(n, str) and n.isprintable() and n for n in names):
            raise ConfigError(f"{where}: syscalls[{i}] names no syscall (names: a list of syscall names)")
        args = group.get("args") or []
        if not isinstance(args, list):
            raise ConfigError(f"{where}: syscalls[{i}].args is not a list")
        conditions = []
        for j, arg in enumerate(args):
            if not isinstance(arg, dict):
                raise ConfigError(f"{where}: syscalls[{i}].args[{j}] is not an object")
            index, value, two, op = arg.get("index"), arg.get("value"), arg.get("valueTwo", 0), arg.get("op")
            if not _integer(index, 0, 5):
                raise ConfigError(
                    f"{where}: syscalls[{i}].args[{j}].index {_shown(index)}: a syscall has arguments 0-5"
                )
            for key, number in (("value", value), ("valueTwo", two)):
                if not _integer(number, 0, (1 << 64) - 1):
                    raise ConfigError(f"{where}: syscalls[{i}].args[{j}].{key} {_shown(number)}: not a 64-bit value")
            if not isinstance(op, str) or op not in ops:
                raise ConfigError(f"{where}: syscalls[{i}].args[{j}].op {_shown(op)}: use one of {', '.join(ops)}")
            conditions.append([index, ops[op], value, two])
        rule_action = action(group.get("action"), group.get("errnoRet"), f"syscalls[{i}].action")
        for name in names:
            profile["rules"].append([rule_action, name, conditions])
    return profile


def _integer(value: Any, lowest: int, highest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= highest


def _shown(value: Any) -> str:
    """A value of the profile, for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-12:]


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
        if spec == profile["default"]:
            continue  # libseccomp refuses a rule that does what the default does (EACCES); runc skips it too
        try:
            sc.resolve_syscall(sc.Arch.NATIVE, name)
        except Exception:  # noqa: BLE001 - a syscall this architecture does not have
            continue
        conditions = [
            sc.Arg(i, ops[op], value, mask) if op == "masked_eq" else sc.Arg(i, ops[op], value)
            for i, op, value, mask in args
        ]
        try:
            filt.add_rule(act(spec), name, *conditions)
        except OSError as exc:  # e.g. two conditions on one argument, or a rule libseccomp cannot express
            raise ConfigError(
                f"seccomp rule for {name} ({spec[0]}, {len(conditions)} conditions): libseccomp refuses it "
                f"({exc.strerror or exc}); fix or drop the rule in the profile"
            ) from None
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
