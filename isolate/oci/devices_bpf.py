"""cgroup v2 device rules: a BPF_PROG_TYPE_CGROUP_DEVICE program (v2 has no devices.allow file).

The kernel runs the program on every open or mknod of a device node by a process of the
cgroup, with ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}``
(access_type = access << 16 | type).  Rules are checked last first and the first match
decides, which gives the same result as v1's devices.allow/deny lines written in order
(runc's devicefilter does the same); nothing matching means deny.  The program is built
here instruction by instruction and loaded with bpf(2) through ctypes: no compiler, no
library.
"""

from __future__ import annotations

import ctypes
import os
import struct

from isolate import _libc as L
from isolate.errors import HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_TYPES = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE

_libc = L._libc  # the C library as isolate/_libc.py binds it (errno kept, syscall returns long)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K
_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95


def program(rules: list[dict[str, Any]]) -> bytes:
    """The instructions for ``linux.resources.devices``-style rules (allow, type, major, minor, access)."""
    code = [
        _insn(_LDX_W, 2, 1, 0),  # r2 = access_type
        _insn(_AND_K, 2, imm=0xFFFF),  # r2 = type
        _insn(_LDX_W, 3, 1, 0),
        _insn(_RSH_K, 3, imm=16),  # r3 = access requested
        _insn(_LDX_W, 4, 1, 4),  # r4 = major
        _insn(_LDX_W, 5, 1, 8),  # r5 = minor
    ]
    for rule in reversed(rules):
        block: list[bytes] = []
        kind = rule.get("type") or "a"
        if kind in _TYPES:
            block.append(_insn(_JNE_K, 2, imm=_TYPES[kind]))
        elif kind != "a":
            continue  # a fifo or other: no device rule applies
        access = 0
        for letter in rule.get("access") or "rwm":
            access |= _ACCESS.get(letter, 0)
        if access != 7:
            # Every requested kind of access must be among the rule's: (r3 & access) == r3.
            block += [_insn(_MOV_X, 1, 3), _insn(_AND_K, 1, imm=access), _insn(_JNE_X, 1, 3)]
        if rule.get("major") not in (None, -1):
            block.append(_insn(_JNE_K, 4, imm=int(rule["major"])))
        if rule.get("minor") not in (None, -1):
            block.append(_insn(_JNE_K, 5, imm=int(rule["minor"])))
        verdict = [_insn(_MOV_K, 0, imm=1 if rule.get("allow") else 0), _insn(_EXIT)]
        # Each jump skips to the end of this block: past the instructions after it.
        size = len(block) + len(verdict)
        fixed = []
        for i, ins in enumerate(block):
            op, regs, off, imm = struct.unpack("<BBhi", ins)
            if op in (_JNE_K, _JNE_X):
                off = size - i - 1
            fixed.append(struct.pack("<BBhi", op, regs, off, imm))
        code += fixed + verdict
        if not block:
            # It matches everything: the verifier refuses code after it as unreachable.
            return b"".join(code)
    code += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT)]  # nothing matched: deny
    return b"".join(code)


def load(insns: bytes) -> int:
    """bpf(BPF_PROG_LOAD): the program's descriptor; the verifier's log in the error."""
    nr = _SYS_BPF[os.uname().machine]
    buf = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf (then zeros)
    struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(buf),
                     ctypes.addressof(license), 1, len(log), ctypes.addressof(log))  # fmt: skip
    prog = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_PROG_LOAD), attr, ctypes.c_uint(128))
    if prog < 0:
        err = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise HostSupportError(
            f"loading the cgroup v2 device filter failed: {os.strerror(err)} {' / '.join(verifier)}".rstrip()
        )
    return int(prog)


def attach(cgroup_dir: str, rules: list[dict[str, Any]]) -> None:
    """Load the program for ``rules`` and attach it to the cgroup (it stays until the cgroup goes)."""
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise HostSupportError("device rules on cgroup v2 need bpf(2), unknown on this architecture")
    prog = load(program(rules))
    try:
        fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = ctypes.create_string_buffer(128)
            # target_fd, attach_bpf_fd, attach_type, attach_flags
            struct.pack_into("<IIII", attr, 0, fd, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI)
            if _libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_PROG_ATTACH), attr, ctypes.c_uint(128)) < 0:
                err = ctypes.get_errno()
                raise HostSupportError(f"attaching the cgroup v2 device filter failed: {os.strerror(err)}")
        finally:
            os.close(fd)
    finally:
        os.close(prog)
