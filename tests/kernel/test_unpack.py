"""The layer unpacker: a layer in overlayfs format, its digests, and hostile archives refused.

Every archive is built here with tarfile (or by hand, for the broken ones).  The hostile
cases aim at a "victim" directory under tmp_path, never at the real /etc, so a failure of
the defence cannot harm the host; each checks that nothing outside ``dest`` changed.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isolate.errors import IsolateError
from isolate.images.unpack import CHUNK, ImageError, LayerInfo, unpack_layer

T0 = 1_600_000_000  # an mtime no file on the host has by chance

Member = tuple[tarfile.TarInfo, bytes]


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = T0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT, **kwargs: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **kwargs) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def unpack(blob: bytes, dest: Path, **kwargs: object) -> LayerInfo:
    dest.mkdir(parents=True, exist_ok=True)
    return unpack_layer(io.BytesIO(blob), str(dest), **kwargs)  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- a normal layer


def test_a_normal_layer_is_reproduced(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    members = [
        entry("./", tarfile.DIRTYPE, mode=0o711, mtime=T0 + 1),
        entry("./etc", tarfile.DIRTYPE, mtime=T0 + 2),
        entry("./etc/hello", data=b"hello\n", mtime=T0 + 3),
        entry("etc/big", data=payload),
        entry("bin/su", data=b"#!/bin/sh\n", mode=0o4755),  # no entry for bin/: made on the way
        entry("srv", tarfile.DIRTYPE, mode=0o2775 | stat.S_ISVTX, uid=1234, gid=4321, mtime=T0 + 4),
        entry("srv/owned", data=b"x", uid=1234, gid=4321, mode=0o640),
        entry("etc/passwd-link", tarfile.SYMTYPE, linkname="/etc/passwd", uid=1234, mtime=T0 + 5),
        entry("etc/dangling", tarfile.SYMTYPE, linkname="../../../nowhere"),
        entry("etc/hello-again", tarfile.LNKTYPE, linkname="etc/hello"),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620, uid=1234),
        entry("etc/with-xattr", data=b"x", pax_headers={"SCHILY.xattr.user.test": "value"}),
        entry("etc/empty", data=b""),
    ]
    layer = make_tar(members)
    dest = tmp_path / "dest"
    info = unpack(layer, dest)
    assert info.entries == len(members)
    assert info.size == len(layer) and info.digest == info.diff_id == sha256(layer)
    assert "LayerInfo('sha256:" in repr(info)

    st = dest.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime == T0 + 1
    assert (dest / "etc" / "hello").read_bytes() == b"hello\n"
    assert (dest / "etc" / "big").read_bytes() == payload
    assert (dest / "etc" / "empty").read_bytes() == b""
    assert (dest / "etc" / "hello").stat().st_mtime == T0 + 3
    assert (dest / "etc").stat().st_mtime == T0 + 2  # set after its content was written
    assert stat.S_IMODE((dest / "bin" / "su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o755
    srv = (dest / "srv").stat()
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid, srv.st_mtime) == (0o3775, 1234, 4321, T0 + 4)
    owned = (dest / "srv" / "owned").stat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 4321, 0o640)
    link = (dest / "etc" / "passwd-link").lstat()
    assert os.readlink(dest / "etc" / "passwd-link") == "/etc/passwd"  # kept as text, resolved in the container
    assert (link.st_uid, link.st_mtime) == (1234, T0 + 5)
    assert os.readlink(dest / "etc" / "dangling") == "../../../nowhere"
    assert os.path.samefile(dest / "etc" / "hello", dest / "etc" / "hello-again")
    assert (dest / "etc" / "hello").stat().st_nlink == 2
    fifo = (dest / "run" / "fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620 and fifo.st_uid == 1234
    assert os.getxattr(dest / "etc" / "with-xattr", "user.test") == b"value"


@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"]
)
def test_long_names_large_ids_and_header_formats(tmp_path: Path, fmt: int) -> None:
    long_dir = "d" * 90 + "/" + "e" * 60  # 151 bytes: ustar splits it into prefix and name
    target = "/" + "t" * 150
    big_id = 1234 if fmt == tarfile.USTAR_FORMAT else 3_000_000  # past ustar's 7 octal digits
    members = [
        entry(long_dir, tarfile.DIRTYPE),
        entry(long_dir + "/f", data=b"deep", uid=big_id, gid=big_id),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        members.append(entry("s", tarfile.SYMTYPE, linkname=target))
        members.append(entry("n" * 200, data=b"long"))
    dest = tmp_path / "dest"
    unpack(make_tar(members, fmt), dest)
    f = dest / long_dir / "f"
    assert f.read_bytes() == b"deep" and (f.stat().st_uid, f.stat().st_gid) == (big_id, big_id)
    if fmt != tarfile.USTAR_FORMAT:
        assert os.readlink(dest / "s") == target
        assert (dest / ("n" * 200)).read_bytes() == b"long"


def test_pax_details(tmp_path: Path) -> None:
    """Sub-second mtimes, a global header, unicode names, and forged overlay xattrs dropped."""
    members = [
        entry("frac", data=b"x", mtime=T0 + 0.25),
        entry("ünïcødé", data=b"u"),
        entry(
            "fake-opaque",
            tarfile.DIRTYPE,
            pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.ok": "1"},
        ),
    ]
    dest = tmp_path / "dest"
    unpack(make_tar(members, pax_headers={"comment": "a global header, ignored", "uid": "7"}), dest)
    assert (dest / "frac").stat().st_mtime_ns == T0 * 10**9 + 250_000_000
    assert (dest / "ünïcødé").read_bytes() == b"u"
    assert os.getxattr(dest / "fake-opaque", "user.ok") == b"1"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "fake-opaque")
    assert (dest / "frac").stat().st_uid == 0


def posix_acl(*entries: tuple[int, int]) -> str:
    """A system.posix_acl_* xattr value (tag, permissions), as tarfile's pax headers want it."""
    data = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    return data.decode("utf-8", "surrogateescape")


def test_modes_and_groups_whatever_the_umask_setgid_and_default_acls(tmp_path: Path) -> None:
    members = [
        entry("plain", data=b"x", mode=0o664),
        entry("shared", tarfile.DIRTYPE, mode=0o2775, gid=4321),
        entry("shared/root-owned", data=b"x", uid=0, gid=0),  # not the directory's group
        entry("shared/sub", tarfile.DIRTYPE, mode=0o755),
        entry("shared/sub/f", data=b"x"),
        entry(
            "acl",
            tarfile.DIRTYPE,
            pax_headers={"SCHILY.xattr.system.posix_acl_default": posix_acl((1, 7), (4, 0), (0x20, 0))},
        ),
        entry("acl/f", data=b"x", mode=0o644),  # the default ACL alone would make it 0600
    ]
    old = os.umask(0o022)  # takes 0o020 from "plain"; the default ACL replaces it in acl/
    try:
        unpack(make_tar(members), tmp_path / "dest")
    finally:
        os.umask(old)
    dest = tmp_path / "dest"
    assert stat.S_IMODE((dest / "plain").stat().st_mode) == 0o664
    assert (dest / "shared").stat().st_gid == 4321
    assert (dest / "shared" / "root-owned").stat().st_gid == 0
    assert (dest / "shared" / "sub" / "f").stat().st_gid == 0
    assert "system.posix_acl_default" in os.listxattr(dest / "acl")
    assert stat.S_IMODE((dest / "acl" / "f").stat().st_mode) == 0o644


def test_deep_and_wide_trees(tmp_path: Path) -> None:
    """More directories than descriptors kept open, in and out of tree order."""
    deep = "/".join(["level"] * 600)  # 3599 bytes: close to PATH_MAX
    wide = [f"w{i}" for i in range(300)]
    members = [entry(deep, tarfile.DIRTYPE, mode=0o750), entry(deep + "/f", data=b"deep")]
    members += [entry(w, tarfile.DIRTYPE, mtime=T0 + i) for i, w in enumerate(wide)]
    members += [entry(f"{w}/f", data=w.encode()) for w in reversed(wide)]
    members += [entry(f"{w}/g", tarfile.LNKTYPE, linkname=f"{wide[0]}/f") for w in wide[1:]]
    dest = tmp_path / "dest"
    unpack(make_tar(members), dest)
    assert (dest / deep / "f").read_bytes() == b"deep"
    assert stat.S_IMODE((dest / deep).stat().st_mode) == 0o750 and (dest / deep).stat().st_mtime == T0
    for i, w in enumerate(wide):
        assert (dest / w / "f").read_bytes() == w.encode() and (dest / w).stat().st_mtime == T0 + i
    assert (dest / wide[0] / "f").stat().st_nlink == 300


def test_existing_entries_are_replaced_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "canary").write_text("canary\n")
    members = [
        entry("f", tarfile.SYMTYPE, linkname=str(victim / "canary")),
        entry("f", data=b"replaced"),  # must replace the symlink, not write to the canary
        entry("d", tarfile.DIRTYPE),
        entry("d/x", data=b"x"),
        entry("d", data=b"a file now"),  # a file replaces a whole directory
        entry("e", data=b"a file"),
        entry("e", tarfile.DIRTYPE, mode=0o700),  # and a directory replaces a file
        entry("e/y", data=b"y"),
        entry("s", tarfile.SYMTYPE, linkname=str(victim / "canary")),
        entry("h", tarfile.LNKTYPE, linkname="s"),  # a hard link to the symlink itself
    ]
    dest = tmp_path / "dest"
    unpack(make_tar(members), dest)
    assert (victim / "canary").read_text() == "canary\n" and (victim / "canary").stat().st_nlink == 1
    assert not (dest / "f").is_symlink() and (dest / "f").read_bytes() == b"replaced"
    assert (dest / "d").read_bytes() == b"a file now"
    assert (dest / "e" / "y").read_bytes() == b"y" and stat.S_IMODE((dest / "e").stat().st_mode) == 0o700
    assert (dest / "h").is_symlink() and os.lstat(dest / "h").st_ino == os.lstat(dest / "s").st_ino


def test_devices_only_when_allowed(tmp_path: Path) -> None:
    layer = make_tar([entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)])
    info = unpack(layer, tmp_path / "dest", allow_devices=True)
    st = (tmp_path / "dest" / "dev" / "null").lstat()
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666 and info.entries == 1
    with pytest.raises(ImageError, match=r"entry 'dev/null' is a character device \(1, 3\)"):
        unpack(layer, tmp_path / "dest2")


def test_dest_must_be_an_empty_directory(tmp_path: Path) -> None:
    layer = make_tar([entry("f", data=b"x")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old").write_text("old")
    with pytest.raises(ImageError, match="not empty"):
        unpack_layer(io.BytesIO(layer), str(tmp_path / "full"))
    with pytest.raises(ImageError, match="cannot open"):
        unpack_layer(io.BytesIO(layer), str(tmp_path / "missing"))


def test_image_error_is_an_isolate_error() -> None:
    assert issubclass(ImageError, IsolateError) and ImageError.exit_code == 125


# ---------------------------------------------------------------------------- whiteouts


def whiteout_layers(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    unpack(
        make_tar(
            [
                entry("a", data=b"a"),
                entry("d", tarfile.DIRTYPE),
                entry("d/x", data=b"x"),
                entry("keep", data=b"k"),
            ]
        ),
        lower,
    )
    unpack(
        make_tar(
            [
                entry(".wh.a"),
                entry("d", tarfile.DIRTYPE),
                entry("d/.wh..wh..opq"),
                entry("d/y", data=b"y"),
                entry("new/.wh..wh..opq"),  # no entry for new/: made for the marker
            ]
        ),
        upper,
    )
    return lower, upper


def test_whiteouts_become_overlayfs_ones(tmp_path: Path) -> None:
    _, upper = whiteout_layers(tmp_path)
    st = (upper / "a").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert sorted(os.listdir(upper)) == ["a", "d", "new"]  # no .wh. file itself
    assert os.listdir(upper / "d") == ["y"]
    assert os.getxattr(upper / "d", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(upper / "new", "trusted.overlay.opaque") == b"y"


def test_whiteouts_work_in_an_overlay_mount(tmp_path: Path) -> None:
    lower, upper = whiteout_layers(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t overlay overlay -o "lowerdir=$1:$2" "$3" && ls -A "$3" && echo -- && ls -A "$3/d"'
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed by this test"
    out = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh", str(upper), str(lower), str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    top, _, d = out.stdout.partition("--\n")
    assert top.split() == ["d", "keep", "new"]  # a is gone
    assert d.split() == ["y"]  # d is opaque: x of the lower layer is hidden


# ---------------------------------------------------------------------------- digests, compression


def test_digests_of_a_gzip_layer(tmp_path: Path) -> None:
    tar = make_tar([entry("f", data=os.urandom(3 * CHUNK)), entry("g", data=b"g" * 5000)])
    blob = gzip.compress(tar)
    seen: list[int] = []
    info = unpack(
        blob, tmp_path / "a", expected_digest=sha256(blob), expected_diff_id=sha256(tar), progress=seen.append
    )
    assert (info.digest, info.diff_id, info.size, info.entries) == (sha256(blob), sha256(tar), len(blob), 2)
    assert seen and seen == sorted(seen) and seen[-1] == len(blob)
    assert all(b - a >= CHUNK for a, b in zip([0] + seen[:-1], seen[:-1]))  # at most about every MiB

    with pytest.raises(ImageError, match="digest sha256:") as exc:
        unpack(blob, tmp_path / "b", expected_digest="sha256:" + "0" * 64)
    assert "pull or import the image again" in str(exc.value)
    with pytest.raises(ImageError, match="diff id"):
        unpack(blob, tmp_path / "c", expected_diff_id="sha256:" + "0" * 64)
    with pytest.raises(ImageError, match="unsupported digest algorithm"):
        unpack(blob, tmp_path / "d", expected_digest="md5:00")
    sha512 = "sha512:" + hashlib.sha512(blob).hexdigest()
    assert unpack(blob, tmp_path / "e", expected_digest=sha512).digest == sha512


def test_digest_covers_what_follows_the_archive(tmp_path: Path) -> None:
    tar = make_tar([entry("f", data=b"x")]) + bytes(10_000)  # extra zero padding after the end blocks
    info = unpack(tar, tmp_path / "a")
    assert info.digest == info.diff_id == sha256(tar) and info.size == len(tar)


def gzip_two_members(tar: bytes) -> bytes:
    half = len(tar) // 2
    return gzip.compress(tar[:half]) + gzip.compress(tar[half:]) + bytes(100)


COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "gzip-multi-member": gzip_two_members,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_compression_is_detected(tmp_path: Path, compression: str) -> None:
    data = os.urandom(2 * CHUNK + 1000)
    tar = make_tar([entry("dir", tarfile.DIRTYPE), entry("dir/f", data=data), entry("dir/g", data=b"small")])
    blob = COMPRESSIONS[compression](tar)
    info = unpack(blob, tmp_path / "dest")
    assert (info.digest, info.diff_id, info.entries) == (sha256(blob), sha256(tar), 3)
    assert (tmp_path / "dest" / "dir" / "f").read_bytes() == data


def test_zstd_without_the_module_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    with pytest.raises(ImageError, match="pip install zstandard"):
        unpack(b"\x28\xb5\x2f\xfd" + os.urandom(100), tmp_path / "dest")


def test_zstd_with_the_module(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    tar = make_tar([entry("f", data=os.urandom(CHUNK + 10)), entry("g", data=b"g")])
    blob = zstandard.ZstdCompressor().compress(tar[:1000]) + zstandard.ZstdCompressor().compress(tar[1000:])
    info = unpack(blob, tmp_path / "dest")  # two frames, as a parallel compressor writes
    assert (info.digest, info.diff_id, info.entries) == (sha256(blob), sha256(tar), 2)


def test_the_stream_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            sizes.append(-1 if n is None else n)
            return super().read(n)

    blob = gzip.compress(make_tar([entry("f", data=os.urandom(4 * CHUNK))]))
    unpack_layer(Recording(blob), str(tmp_path))
    assert sizes and all(0 < n <= CHUNK for n in sizes)


class Boom(Exception):
    pass


def test_errors_on_either_side_stop_the_reading_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = gzip.compress(make_tar([entry("f", data=os.urandom(6 * CHUNK))]))
    threads = threading.active_count()

    class Failing(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > 2 * CHUNK:
                raise OSError(errno.ECONNRESET, "Connection reset by peer")
            return super().read(n)

    with pytest.raises(ImageError, match="corrupt or truncated layer .*Connection reset by peer"):
        unpack_layer(Failing(blob), str(tmp_path))

    reads_after: list[int] = []
    done = False

    class Watched(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if done:
                reads_after.append(-1 if n is None else n)
            return super().read(n)

    def progress(n: int) -> None:
        raise Boom()

    (tmp_path / "b").mkdir()
    with pytest.raises(Boom):
        unpack_layer(Watched(blob), str(tmp_path / "b"), progress=progress)
    done = True
    time.sleep(0.2)
    assert reads_after == [] and threading.active_count() == threads

    from isolate.images import unpack as module

    monkeypatch.setattr(module._Unpacker, "_produce", lambda self: None)
    (tmp_path / "c").mkdir()
    with pytest.raises(ImageError, match="ended unexpectedly"):
        unpack_layer(io.BytesIO(blob), str(tmp_path / "c"))
    assert threading.active_count() == threads


# ---------------------------------------------------------------------------- hostile layers


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A GNU header (base-256 numbers: any size fits) claiming ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, T0
    return info.tobuf(tarfile.GNU_FORMAT)


def truncated_file(victim: Path) -> bytes:
    tar = make_tar([entry("ok", data=b"fine"), entry("data/f", data=os.urandom(100_000))])
    return tar[: 2048 + 50_000]  # in the middle of data/f's content


def pax(records: bytes, then: str = "f") -> bytes:
    """A pax header "PaxHeaders/evil" holding ``records``, then an empty file ``then``, then the end."""
    padded = records + bytes(-len(records) % 512)
    return header("PaxHeaders/evil", len(records), tarfile.XHDTYPE) + padded + header(then, 0) + bytes(1024)


# case -> (archive builder given the victim directory, the entry its message must name; "" for none)
HOSTILE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "traversal": (lambda v: make_tar([entry("../victim/x", data=b"pwned")]), "../victim/x"),
    "traversal-deep": (lambda v: make_tar([entry("a/b/../../../victim/x", data=b"pwned")]), "a/b/../../../victim/x"),
    "absolute": (lambda v: make_tar([entry(f"{v}/x", data=b"pwned")]), "{v}/x"),
    "absolute-dir": (lambda v: make_tar([entry(f"{v}/sub", tarfile.DIRTYPE)]), "{v}/sub"),
    "symlink-escape": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname=str(v)), entry("s/x", data=b"pwned")]),
        "s/x",
    ),
    "relative-symlink-escape": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname="../victim"), entry("s/x", data=b"pwned")]),
        "s/x",
    ),
    "relative-symlink-escape-2": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname="../../victim"), entry("s/canary", data=b"pwned")]),
        "s/canary",
    ),
    "symlink-to-root": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname="../../.."), entry("s/x", data=b"pwned")]),
        "s/x",
    ),
    "symlinked-parent": (
        lambda v: make_tar(
            [
                entry("d", tarfile.DIRTYPE),
                entry("d/e", tarfile.SYMTYPE, linkname=str(v)),
                entry("d/e/x", data=b"pwned"),
            ]
        ),
        "d/e/x",
    ),
    "symlink-then-dir": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname=str(v)), entry("s/sub/x", data=b"pwned")]),
        "s/sub/x",
    ),
    "symlink-then-whiteout": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname=str(v)), entry("s/.wh.canary")]),
        "s/.wh.canary",
    ),
    "symlink-then-opaque": (
        lambda v: make_tar([entry("s", tarfile.SYMTYPE, linkname=str(v)), entry("s/.wh..wh..opq")]),
        "s/.wh..wh..opq",
    ),
    "hardlink-relative": (
        lambda v: make_tar([entry("l", tarfile.LNKTYPE, linkname="../victim/canary")]),
        "l",
    ),
    "hardlink-relative-2": (
        lambda v: make_tar([entry("l", tarfile.LNKTYPE, linkname="../../victim/canary")]),
        "l",
    ),
    "hardlink-absolute": (lambda v: make_tar([entry("l", tarfile.LNKTYPE, linkname=f"{v}/canary")]), "l"),
    "hardlink-through-symlink": (
        lambda v: make_tar(
            [entry("s", tarfile.SYMTYPE, linkname=str(v)), entry("l", tarfile.LNKTYPE, linkname="s/canary")]
        ),
        "l",
    ),
    "hardlink-into-symlink": (
        lambda v: make_tar(
            [
                entry("f", data=b"f"),
                entry("s", tarfile.SYMTYPE, linkname=str(v)),
                entry("s/l", tarfile.LNKTYPE, linkname="f"),
            ]
        ),
        "s/l",
    ),
    "hardlink-to-dir": (
        lambda v: make_tar([entry("d", tarfile.DIRTYPE), entry("l", tarfile.LNKTYPE, linkname="d")]),
        "l",
    ),
    "root-as-symlink": (
        lambda v: make_tar([entry("./", tarfile.SYMTYPE, linkname=str(v)), entry("x", data=b"pwned")]),
        "./",
    ),
    "hardlink-to-missing": (lambda v: make_tar([entry("l", tarfile.LNKTYPE, linkname="nothing")]), "l"),
    "hardlink-to-later": (
        lambda v: make_tar([entry("l", tarfile.LNKTYPE, linkname="f"), entry("f", data=b"f")]),
        "l",
    ),
    "device": (lambda v: make_tar([entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3)]), "null"),
    "block-device": (lambda v: make_tar([entry("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)]), "sda"),
    "huge-size": (lambda v: header("big", 10**12) + os.urandom(4096), "big"),
    "huge-size-ustar": (
        lambda v: make_tar([entry("ok", data=b"ok")])[:1024] + header("big", 8**11 - 1) + bytes(1024),
        "big",
    ),
    "huge-pax-header": (lambda v: header("PaxHeaders/evil", 10**12, tarfile.XHDTYPE) + bytes(4096), "PaxHeaders/evil"),
    "huge-gnu-longname": (
        lambda v: header("././@LongLink", 10**9, tarfile.GNUTYPE_LONGNAME) + bytes(4096),
        "././@LongLink",
    ),
    "bad-pax-record": (lambda v: pax(b"99999999 path=x\n"), "PaxHeaders/evil"),
    "pax-nul-in-name": (lambda v: pax(b"14 path=a\0b/c\n"), "a\\x00b/c"),
    "pax-traversal": (lambda v: pax(b"20 path=../victim/x\n"), "../victim/x"),
    "name-too-long": (lambda v: make_tar([entry("x/" * 2100 + "f", data=b"x")], tarfile.GNU_FORMAT), "x/x/x/"),
    "sparse": (lambda v: make_tar([entry("sparse", tarfile.GNUTYPE_SPARSE)], tarfile.GNU_FORMAT), "sparse"),
    "truncated-file": (truncated_file, "data/f"),
    "corrupt-gzip": (lambda v: b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + os.urandom(5000), ""),
    "truncated-gzip": (lambda v: gzip.compress(make_tar([entry("f", data=os.urandom(50_000))]))[:20_000], "f"),
    "not-a-tar": (lambda v: b"hello, this is not an archive\n" * 100, ""),
}


def snapshot(root: Path, skip: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` but ``skip``: type, mode, owner, size, times, links, content."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if Path(path) == skip:
                continue
            st = os.lstat(path)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_nlink, extra)
    return found


def etc_passwd() -> tuple[object, ...]:
    st = os.stat("/etc/passwd")
    with open("/etc/passwd", "rb") as f:
        return (st.st_mtime_ns, st.st_size, st.st_nlink, hashlib.sha256(f.read()).hexdigest())


@pytest.fixture()
def arena(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A store holding an empty dest, and a victim directory with a canary next to the store."""
    store, victim = tmp_path / "store", tmp_path / "victim"
    (store / "dest").mkdir(parents=True)
    victim.mkdir()
    (victim / "canary").write_text("canary\n")
    (store / "victim").mkdir()  # what "../victim" from dest reaches
    (store / "victim" / "canary").write_text("canary 2\n")
    yield store / "dest", victim


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_layers_are_refused(arena: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    dest, victim = arena
    build, named = HOSTILE[case]
    blob = build(victim)
    before, passwd = snapshot(tmp_path, dest), etc_passwd()
    with pytest.raises(ImageError) as exc:
        unpack_layer(io.BytesIO(blob), str(dest))
    message = str(exc.value)
    assert f"entry '{named.format(v=victim)}" in message if named else "corrupt" in message, message
    assert "refusing this image" in message or "corrupt or truncated layer" in message, message
    assert snapshot(tmp_path, dest) == before, "something outside dest changed"
    assert etc_passwd() == passwd
    assert not os.path.exists(victim / "x") and not os.path.exists(dest.parent / "victim" / "x")


def test_after_an_error_dest_holds_partial_content_the_store_can_remove(
    arena: tuple[Path, Path], tmp_path: Path
) -> None:
    dest, victim = arena
    layer = make_tar(
        [
            entry("locked", tarfile.DIRTYPE, mode=0o000),
            entry("locked/f", data=b"x", mode=0o000),
            entry("ro", tarfile.DIRTYPE, mode=0o555),
            entry("s", tarfile.SYMTYPE, linkname=str(victim)),
            entry("s/x", data=b"pwned"),
            entry("never", data=b"not reached"),
        ]
    )
    before = snapshot(tmp_path, dest)
    with pytest.raises(ImageError, match="entry 's/x' goes through 's'"):
        unpack_layer(io.BytesIO(layer), str(dest))
    assert sorted(os.listdir(dest)) == ["locked", "ro", "s"]  # partial: the caller deletes it
    shutil.rmtree(dest)
    after = snapshot(tmp_path, dest)
    after.pop("store"), before.pop("store")  # the store directory lost dest, nothing else changed
    assert after == before
