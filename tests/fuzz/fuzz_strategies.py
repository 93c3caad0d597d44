"""Hypothesis strategies for hostile input: tar archives, JSON documents, option values.

Inputs that must name the fuzz case's own paths (an absolute path to the sentinel directory
beside the target) hold the placeholder ``@OUT@``; the feeders in fuzz_targets.py replace it
once the case's workspace exists.  Strategies produce *specs* (members, mutation lists) that
shrink well; the bytes are built from them by the helpers here, in the feeder.
"""

from __future__ import annotations

import copy
import io
import json
import math
import tarfile
from typing import Any

from hypothesis import strategies as st

OUT = "@OUT@"  # replaced by the absolute path of the sentinel directory beside the target

# ---------------------------------------------------------------------------------------- tar
NAME_PIECES = [
    "a", "b", "dir", "sub", "victim", "link", "l2", ".", "..", "", ".wh.a", ".wh.b", ".wh.link", ".wh..wh..opq",
    ".wh.", ".wh..", ".wh..wh.plnk", "\x00x", "é", "\udcff", " ", "a\nb", "outside",
]  # fmt: skip
PREFIXES = ["", "", "", "./", "/", "../", "./../", OUT + "/", "//"]
LINK_TARGETS = ["../outside", "../outside/victim", "../../", "..", "/", OUT, OUT + "/victim", "/etc", "link", "l2",
                "a", "dir/..", "link/victim", "", "./a", "dir"]  # fmt: skip

KINDS = [b"0"] * 8 + [b"5"] * 4 + [b"2"] * 3 + [b"1"] * 3 + [b"3", b"4", b"6", b"7", b"\0", b"S", b"M", b"V", b"g",
                                                          b"x", b"L", b"K", b"9", b"Z"]  # fmt: skip
NUMBERS = [0, 1, 7, 0o777, 0o4755, 0o7777, 1000, 65534, 2**21 - 1, 2**31, 2**32 - 1, 2**32, 2**33, 2**63 - 1, 2**64,
           -1, -2, -(2**63)]  # fmt: skip
PAX_KEYS = ["path", "linkpath", "size", "uid", "gid", "mtime", "atime", "ctime", "uname", "gname", "comment",
            "hdrcharset", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name", "GNU.sparse.realsize",
            "GNU.sparse.size", "GNU.sparse.numblocks", "GNU.sparse.offset", "GNU.sparse.map",
            "SCHILY.xattr.user.x", "SCHILY.xattr.trusted.overlay.opaque", "SCHILY.xattr.trusted.overlay.redirect",
            "SCHILY.xattr.user.overlay.opaque", "SCHILY.xattr.security.capability",
            "SCHILY.xattr.system.posix_acl_default", "SCHILY.xattr.system.posix_acl_access",
            "SCHILY.xattr.security.selinux", "SCHILY.xattr.", "LIBARCHIVE.xattr.user.y", "x"]  # fmt: skip
PAX_VALUES = ["0", "1", "-1", "1.5", "1700000000.123456789", "-1.5", "nan", "inf", "1e400", "9" * 30, "9" * 5000,
              " 12", "", "0x10", "a", "../outside/victim", OUT + "/victim", "dir", "link", "\x00", "٣"]  # fmt: skip

# Mostly names a layer may hold, so that an archive gets far enough for its hostile members to
# meet the state the benign ones left (a symlink, then a file written "through" it).
BENIGN_PIECES = ["a", "b", "dir", "sub", "victim", "link", "l2", ".wh.a", ".wh.link", ".wh..wh..opq"]
names = st.one_of(
    st.builds(
        lambda prefix, parts, slash: prefix + "/".join(parts) + slash,
        st.sampled_from(["", "", "", "./"]),
        st.lists(st.sampled_from(BENIGN_PIECES), min_size=1, max_size=3),
        st.sampled_from(["", "", "", "/"]),
    ),
    st.builds(
        lambda prefix, parts, slash: prefix + "/".join(parts) + slash,
        st.sampled_from(PREFIXES),
        st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=4),
        st.sampled_from(["", "", "/"]),
    ),
    st.text(min_size=1, max_size=300),
    st.sampled_from(["a/" * 2100, "x" * 256, "d/" * 60 + "f", "a" * 5000]),
)
link_targets = st.one_of(st.sampled_from(LINK_TARGETS), names)
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(min_value=-(2**70), max_value=2**70))
pax_values = st.one_of(st.sampled_from(PAX_VALUES), st.text(max_size=40), numbers.map(str))


@st.composite
def tar_members(draw: Any) -> dict[str, Any]:
    """One member: what tarfile (or the raw writer, for what tarfile refuses) will write."""
    kind = draw(st.sampled_from(KINDS))
    member: dict[str, Any] = {
        "kind": kind,
        "name": draw(names),
        "linkname": draw(link_targets) if kind in (b"1", b"2") or draw(st.booleans()) else "",
        "data": draw(st.binary(max_size=700)) if kind in (b"0", b"7", b"\0", b"x", b"g", b"L", b"K", b"S") else b"",
        "mode": draw(st.one_of(st.sampled_from([0o644, 0o755, 0o4755, 0o7777, 0, 0o1777]), numbers)),
        "uid": draw(st.one_of(st.sampled_from([0, 0, 1000]), numbers)),
        "gid": draw(st.one_of(st.sampled_from([0, 0, 1000]), numbers)),
        "mtime": draw(st.one_of(st.sampled_from([0, 1700000000, 2**33, -1, 2**63 - 1]), numbers)),
        "devmajor": draw(st.one_of(st.sampled_from([0, 1, 5, 4095, 2**20]), numbers)),
        "devminor": draw(st.one_of(st.sampled_from([0, 3, 255, 2**20]), numbers)),
        "pax": draw(st.one_of(st.just({}), st.dictionaries(st.sampled_from(PAX_KEYS), pax_values, max_size=4))),
        "format": draw(st.sampled_from(["pax", "gnu", "ustar", "raw"])),
        # raw writer only: a size field that lies, a checksum that is wrong or signed
        "size_lie": draw(st.one_of(*[st.none()] * 6, numbers, st.sampled_from([b"77777777777", b"\xff" * 12, b"zz"]))),
        "checksum": draw(st.sampled_from(["good"] * 12 + ["bad", "signed", "blank"])),
    }
    return member


def tar_specs(max_members: int = 10) -> st.SearchStrategy[dict[str, Any]]:
    """A layer: members, how it ends, and its compression."""
    return st.fixed_dictionaries(
        {
            "members": st.lists(tar_members(), max_size=max_members),
            "end": st.sampled_from(["zeros", "zeros", "none", "one-zero-block", "garbage", "half-block"]),
            "compression": st.sampled_from(["none", "none", "none", "gzip", "bzip2", "xz", "zstd"]),
        }
    )


def _numeric(value: Any, width: int) -> bytes:
    """A tar numeric field: octal, or base-256 (GNU) for what octal cannot hold, or raw bytes."""
    if isinstance(value, bytes):
        return value[:width].ljust(width, b"\0")
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    if -(256 ** (width - 1)) // 2 <= value < 0:
        return b"\xff" + (value % 256 ** (width - 1)).to_bytes(width - 1, "big")
    return b"\x80" + (value % 256 ** (width - 1)).to_bytes(width - 1, "big")


def raw_header(m: dict[str, Any], name: bytes, linkname: bytes, size: int) -> bytes:
    """A ustar header written by hand: any field, any checksum (tarfile refuses to write these)."""
    field = _numeric
    header = bytearray(512)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:108] = field(m["mode"], 8)
    header[108:116] = field(m["uid"], 8)
    header[116:124] = field(m["gid"], 8)
    header[124:136] = field(size if m["size_lie"] is None else m["size_lie"], 12)
    header[136:148] = field(m["mtime"], 12)
    header[148:156] = b" " * 8
    header[156:157] = m["kind"]
    header[157:257] = linkname[:100].ljust(100, b"\0")
    header[257:265] = b"ustar\x0000"
    header[329:337] = field(m["devmajor"], 8)
    header[337:345] = field(m["devminor"], 8)
    header[345:500] = name[100:255].ljust(155, b"\0")
    if m["checksum"] == "good":
        header[148:156] = b"%06o\0 " % sum(header)
    elif m["checksum"] == "signed":  # old tars summed signed bytes
        header[148:156] = b"%06o\0 " % (sum(b - 256 if b > 127 else b for b in header) % 0o1000000)
    elif m["checksum"] == "bad":
        header[148:156] = b"%06o\0 " % ((sum(header) + 1) % 0o1000000)
    return bytes(header)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def build_tar(spec: dict[str, Any], out: str) -> bytes:
    """The uncompressed tar stream of a spec, ``@OUT@`` replaced by ``out``."""
    blocks = []
    for m in spec["members"]:
        name = m["name"].replace(OUT, out)
        linkname = m["linkname"].replace(OUT, out)
        pax = {k: v.replace(OUT, out) for k, v in m["pax"].items()}
        data = m["data"]
        blocks.append(_member_blocks(m, name, linkname, pax, data))
    end = spec["end"]
    tail = {"zeros": bytes(1024), "none": b"", "one-zero-block": bytes(512), "garbage": b"\x01" * 512,
            "half-block": bytes(256)}[end]  # fmt: skip
    return b"".join(blocks) + tail


def _member_blocks(m: dict[str, Any], name: str, linkname: str, pax: dict[str, str], data: bytes) -> bytes:
    bname = name.encode("utf-8", "surrogateescape")
    blink = linkname.encode("utf-8", "surrogateescape")
    if m["format"] != "raw" and m["size_lie"] is None and m["checksum"] == "good":
        info = tarfile.TarInfo(name)
        info.type = m["kind"]
        info.linkname = linkname
        info.size = len(data)
        info.mode, info.uid, info.gid, info.mtime = m["mode"] & 0o7777, m["uid"], m["gid"], m["mtime"]
        info.devmajor, info.devminor = m["devmajor"], m["devminor"]
        info.pax_headers = pax
        fmt = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}[m["format"]]
        try:
            return info.tobuf(fmt, "utf-8", "surrogateescape") + _pad(data)
        except (ValueError, OverflowError, UnicodeError, TypeError):
            pass  # a field tarfile cannot write in this format: by hand below
    extra = b""
    if pax:  # pax records written by hand too (a lying length now and then)
        records = b"".join(_pax_record(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                           for k, v in pax.items())  # fmt: skip
        pm = dict(m, kind=b"x", size_lie=None, checksum="good")
        extra = raw_header(pm, b"PaxHeader", b"", len(records)) + _pad(records)
    return extra + raw_header(m, bname, blink, len(data)) + _pad(data)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        import gzip

        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == "bzip2":
        import bz2

        return bz2.compress(data, 1)
    if how == "xz":
        import lzma

        return lzma.compress(data, preset=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


# ------------------------------------------------------------------------------- byte mutation
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "digits", "zero", "ff", "dup"]),
        st.integers(min_value=0, max_value=2**32),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    """Raw-byte mutations of a valid input, at positions taken modulo its length."""
    buf = bytearray(data)
    for op, where, blob in ops:
        if not buf:
            buf += blob
            continue
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= 1 << (where >> 8) % 8
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = blob
        elif op == "delete":
            del buf[i : i + len(blob)]
        elif op == "digits":  # a numeric tar field rewritten: octal digits, spaces, NULs
            buf[i : i + len(blob)] = bytes(b"0127 \0"[b % 6] for b in blob)
        elif op == "zero":
            buf[i : i + len(blob)] = bytes(len(blob))
        elif op == "ff":
            buf[i : i + len(blob)] = b"\xff" * len(blob)
        elif op == "dup":  # a block repeated: headers twice, data where a header should be
            start = i - i % 512
            buf[start:start] = buf[start : start + 512]
    return bytes(buf)


# ---------------------------------------------------------------------------------------- JSON
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**64)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "/",
            "..",
            "../../etc",
            OUT,
            OUT + "/victim",
            "sha256:" + "0" * 64,
            "sha256:",
            "a\nb",
            "\x00",
            "SCMP_ACT_ALLOW",
            "SCMP_CMP_EQ",
            "rw",
            "bind",
            "RLIMIT_NOFILE",
            "CAP_SYS_ADMIN",
            "x" * 5000,
            "1",
            "-1",
            "1e999",
            "nan",
        ]
    ),  # fmt: skip
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
json_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**16),
        st.sampled_from(
            ["same-kind", "same-kind", "same-kind", "replace", "replace", "delete", "wrap", "empty", "nest"]
        ),
        json_values,
    ),
    max_size=4,
)


KIND_NUMBERS = [0, -1, 1, 2, 5, 6, 255, 1000, 4095, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30]  # fmt: skip
KIND_TEXTS = ["", "/", ".", "..", "../../../etc/passwd", "/proc/self/ns/net", "a\nb", "\x00", "x" * 300, "é",
              "SCMP_ACT_KILL", "SCMP_CMP_MASKED_EQ", "RLIMIT_CPU", "CAP_SYS_ADMIN", "2MB", "../x", "1", "-1", "rw",
              "ro", "bind", "rbind", "mount", "user", "pid", "c", "b", "p", "u", "a", "0-1", "1-0", "max", OUT,
              "nodev", "rslave", "shared", "private", "kernel.shmmax", "net.core.somaxconn",
              "vm.swappiness"]  # fmt: skip


def _same_kind(old: Any, index: int) -> Any:
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return KIND_NUMBERS[index % len(KIND_NUMBERS)]
    if isinstance(old, float):
        return [math.nan, math.inf, -0.0, 1e308][index % 4]
    if isinstance(old, str):
        return KIND_TEXTS[index % len(KIND_TEXTS)]
    return old


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*path, i))
    return out


def apply_json_ops(doc: Any, ops: list[tuple[int, str, Any]]) -> Any:
    """A valid document with some of its values replaced, deleted, wrapped or nested deeply."""
    doc = copy.deepcopy(doc)
    for index, op, value in ops:
        paths = _paths(doc)
        path = paths[index % len(paths)]
        if not path:
            doc = value if op == "replace" else [doc] if op == "wrap" else doc
            continue
        if op == "same-kind" and isinstance(value, (dict, list)):
            op = "replace"  # a container replaced by another container of hostile values
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "same-kind":
            parent[key] = _same_kind(parent[key], index)
        elif op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = value
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "empty":
            parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list, str)) else None
        elif op == "nest":
            inner: Any = parent[key]
            for _ in range(value if isinstance(value, int) and 0 < value < 3000 else 200):
                inner = [inner]
            parent[key] = inner
    return doc


json_text_tweaks = st.sampled_from(["none", "none", "none", "deep", "truncate", "bom", "latin1", "trailing", "dup"])


def dump_json(doc: Any, tweak: str, out: str) -> bytes:
    """A document as bytes (NaN and Infinity written as Python's json writes them), tweaked."""
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, RecursionError):
        text = "null"
    text = text.replace(OUT, out)
    raw = text.encode("utf-8", "surrogateescape")
    if tweak == "deep":
        raw = b"[" * 100_000 + raw + b"]" * 100_000
    elif tweak == "truncate":
        raw = raw[: len(raw) // 2]
    elif tweak == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif tweak == "latin1":
        raw = raw + b"\xff\xfe"
    elif tweak == "trailing":
        raw = raw + b" garbage"
    elif tweak == "dup" and raw.startswith(b"{") and len(raw) > 2:
        raw = raw[:-1] + b"," + raw[1:]  # every key twice
    return raw


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def spec_bytes(spec: dict[str, Any], out: str) -> bytes:
    """A layer spec's blob: the tar stream, compressed as the spec says."""
    return compress(build_tar(spec, out), spec["compression"])


def tiny_tar(files: dict[str, bytes]) -> bytes:
    """A valid tar of regular files (the layers of image archives that are not under test)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
