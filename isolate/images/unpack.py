"""Unpack an image layer blob into a directory in overlayfs format, refusing hostile archives.

A layer blob is a tar archive, plain or compressed with gzip, bzip2, xz or zstd (detected
by its magic bytes; zstd needs the optional ``zstandard`` module).  It is read once, as a
stream, never whole in memory: the blob's digest is computed over the bytes as read, the
diff id over the decompressed tar stream, and the entries are written as they arrive.

The result is ready to be an overlay lowerdir: the OCI whiteouts (image-spec layer.md,
"Whiteouts") become overlayfs ones (filesystems/overlayfs.rst, "whiteouts and opaque
directories"): ``DIR/.wh.NAME`` is a 0/0 character device ``DIR/NAME`` and
``DIR/.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on ``DIR``.

An archive is untrusted input.  Nothing is ever written outside ``dest``:

* names are relative: an absolute name or a ``..`` component is refused;
* every parent directory is opened component by component with ``O_NOFOLLOW |
  O_DIRECTORY`` from a descriptor of ``dest``, and the entry is created relative to its
  parent's descriptor, so a symlink in the layer (``link -> /etc``, ``link -> ../..``)
  is never followed: writing "through" it is refused.  A symlink's target is only its
  content (an absolute target is resolved inside the container's root later);
* an existing entry is replaced (unlinked, or removed as a tree), never written through;
  files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``;
* a hard link may point only at an entry of this layer, found the same way;
* device nodes need ``allow_devices``; xattrs named ``trusted.overlay.*`` (or
  ``user.overlay.*``) in the archive are dropped, so a layer cannot forge overlay metadata;
* the tar headers are parsed here, not by :mod:`tarfile`: extended headers (pax, GNU long
  names) are limited to 1 MiB, as in Go's archive/tar, instead of being read whole
  whatever size they claim.

On :class:`ImageError` ``dest`` may hold part of the layer: the caller removes it.  Given a
``file_digests`` dict, the unpacker fills it with the sha256 of each regular file's content by
inode, hashed as the data is written (the store's record of the layer, :mod:`isolate.images.record`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from isolate.errors import IsolateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

__all__ = ["DiskFullError", "ImageError", "LayerInfo", "unpack_layer"]

CHUNK = 1 << 20  # bytes read (and decompressed) at a time; also the progress granularity
MAX_META = 1 << 20  # the largest pax header or GNU long name accepted
PATH_MAX = 4096

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_QUEUE = 8  # chunks read ahead by the reading thread
_FD_CACHE = 128  # directory descriptors kept open (tar archives are mostly in tree order)
_WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"
_FORGED_XATTRS = (b"trusted.overlay.", b"user.overlay.")
_IGNORED_XATTR_ERRORS = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM)
_DIGESTS = ("sha256", "sha512")

# Tar type flags (POSIX ustar, GNU and pax).
_REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
_HARDLINK, _SYMLINK, _CHR, _BLK, _DIR, _FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_TYPE_NAMES = {b"S": "a GNU sparse file", b"M": "a multi-volume continuation", b"V": "a volume label"}


class ImageError(IsolateError):
    """An image or layer is unusable: corrupt, truncated, hostile, or not what its digest says."""


class DiskFullError(ImageError):
    """Writing failed because the filesystem is full (ENOSPC) or a quota is reached (EDQUOT)."""

    entry = ""  # the layer's entry being written, when there was one


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class LayerInfo:
    """What :func:`unpack_layer` read: the blob's digest and size, the diff id, the entry count."""

    __slots__ = ("digest", "diff_id", "size", "entries")

    def __init__(self, digest: str, diff_id: str, size: int, entries: int) -> None:
        self.digest = digest  # "sha256:<hex>" of the blob as read (compressed)
        self.diff_id = diff_id  # "sha256:<hex>" of the uncompressed tar stream
        self.size = size  # bytes of the blob
        self.entries = entries  # tar members (extended headers not counted)

    def __repr__(self) -> str:
        return f"LayerInfo({self.digest!r}, {self.diff_id!r}, size={self.size}, entries={self.entries})"


def _algorithm(expected: str | None, what: str) -> str:
    if expected is None:
        return "sha256"
    algo = expected.partition(":")[0]
    if algo not in _DIGESTS:
        raise ImageError(f"{what} {expected!r}: unsupported digest algorithm; expected sha256:<hex> or sha512:<hex>")
    return algo


def unpack_layer(
    stream: BinaryIO,
    dest: str,
    *,
    allow_devices: bool = False,
    expected_digest: str | None = None,
    expected_diff_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    file_digests: dict[int, str] | None = None,
) -> LayerInfo:
    """Unpack the layer blob read from ``stream`` into the empty directory ``dest``.

    ``dest`` receives the layer in overlayfs format (see the module documentation).  The
    blob may be a plain tar or gzip, bzip2, xz or zstd compressed.  ``progress`` is called
    with the number of blob bytes read so far, about every MiB and once at the end.  With
    ``expected_digest`` / ``expected_diff_id`` the digests are checked after the whole
    stream is read.  Device nodes are refused unless ``allow_devices`` (whiteouts are not
    devices and are always made).  ``file_digests``, when given, receives ``{inode: sha256 hex}``
    of every regular file written.

    Raises :class:`ImageError` for a corrupt, truncated, hostile or mismatching layer, or
    when writing fails; ``dest`` may then hold part of the layer, and the caller removes it.
    Nothing outside ``dest`` is ever written.
    """
    digest_algo = _algorithm(expected_digest, "layer digest")
    diff_algo = _algorithm(expected_diff_id, "layer diff id")
    label = f"layer {expected_digest[:19]}" if expected_digest else f"layer unpacked into {dest}"
    try:
        root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"{label}: cannot open {dest}: {exc.strerror}; give an existing, empty directory") from None
    unpacker = _Unpacker(root, label, allow_devices, dest)
    unpacker.digests = file_digests
    try:
        if os.listdir(root):
            raise ImageError(f"{label}: {dest} is not empty; a layer is unpacked into an empty directory")
        raw = _RawReader(stream, hashlib.new(digest_algo))
        unpacker.open_source(raw, diff_algo, progress)
        unpacker.start()
        unpacker.run()
        unpacker.finish_dirs()
        unpacker.drain()
    except RecursionError:
        raise ImageError(f"{label}: directory tree too deep; refusing this image") from None
    finally:
        unpacker.close()
    if progress is not None and raw.size != unpacker.reported:
        progress(raw.size)
    digest = f"{digest_algo}:{raw.hash.hexdigest()}"
    diff_id = digest if unpacker.diff is None else f"{diff_algo}:{unpacker.diff.hexdigest()}"
    if expected_digest is not None and expected_digest != digest:
        raise ImageError(
            f"layer {expected_digest}: the blob read has digest {digest}: it is corrupt or not the layer "
            "the image names; delete it and pull or import the image again"
        )
    if expected_diff_id is not None and expected_diff_id != diff_id:
        raise ImageError(
            f"{label}: its uncompressed content has diff id {diff_id}, the image config says "
            f"{expected_diff_id}: the image is corrupt or was altered; pull or import it again"
        )
    return LayerInfo(digest, diff_id, raw.size, unpacker.entries)


class _RawReader:
    """The blob as read from the caller's stream: hashed and counted."""

    __slots__ = ("stream", "hash", "size", "head")

    def __init__(self, stream: BinaryIO, hasher: hashlib._Hash) -> None:
        self.stream = stream
        self.hash = hasher
        self.size = 0
        self.head = b""  # bytes peeked at to detect the compression, returned first

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data = self.head if n < 0 or n >= len(self.head) else self.head[:n]
            self.head = self.head[len(data) :]
            return data
        data = self.stream.read(n)
        if data:
            self.hash.update(data)
            self.size += len(data)
        return data or b""

    def peek_magic(self) -> bytes:
        head = b""
        while len(head) < 6:
            data = self.read(6 - len(head))
            if not data:
                break
            head += data
        self.head = head
        return head


def _reads(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while True:
        data = read(CHUNK)
        if not data:
            return
        yield data


def _gunzip(raw: _RawReader) -> Iterator[bytes]:
    """The decompressed chunks of a gzip stream: zlib directly, in large pieces (GzipFile reads 8 KiB
    at a time).  Several members follow each other (RFC 1952) and zero padding after them is allowed;
    zlib checks each member's header, CRC and length."""
    import zlib

    decompressor = zlib.decompressobj(31)
    data = b""
    while True:
        if not data:
            data = raw.read(CHUNK)
            if not data:
                break
        if decompressor.eof:  # a new member, or padding
            data = data.lstrip(b"\0")
            if not data:
                continue
            decompressor = zlib.decompressobj(31)
        out = decompressor.decompress(data, CHUNK)
        data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
        if out:
            yield out
    out = decompressor.flush()
    if out:
        yield out
    if not decompressor.eof:
        raise EOFError("the compressed stream ends before its end marker")


def _show(name: bytes) -> str:
    """A name for a message: control characters escaped, undecodable bytes as \\xNN."""
    text = name.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or base-256 (GNU) when its first byte has bit 7 set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_time(value: bytes) -> int:
    """A pax time ("1700000000" or "1700000000.123456789") in nanoseconds."""
    seconds, _, fraction = value.partition(b".")
    ns = abs(int(seconds)) * 1_000_000_000 + int((fraction + b"000000000")[:9] or b"0")
    return -ns if seconds.startswith(b"-") else ns


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header: ``"%d %s=%s\\n" % (length, key, value)``."""
    records: dict[bytes, bytes] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.index(b" ", i)
        length = int(data[i:space])
        end = i + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise ValueError("bad pax record length")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise ValueError("bad pax record")
        records[key] = value
        i = end
    return records


def _chmod_bits(root: int) -> int:
    """The mode bits a file made by ``open(O_CREAT, mode)`` may lack, which need an fchmod.

    The special bits (open ignores them) and the umask's; all bits when the umask is unknown
    or ``dest`` has a default ACL (which replaces the umask).  The umask is read once: an
    unpack assumes nobody changes it meanwhile.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            umask = next((int(line.split()[1], 8) for line in f if line.startswith(b"Umask:")), None)
        if umask is None or "system.posix_acl_default" in os.listxattr(root):
            return 0o7777
    except (OSError, ValueError, IndexError):
        return 0o7777
    return 0o7000 | umask


class _Unpacker:
    """The state of one unpack: the input buffer, the descriptor cache, the deferred directory times."""

    def __init__(self, root: int, label: str, allow_devices: bool, dest: str = "") -> None:
        self.root = root
        self.label = label
        self.dest = dest  # for the message of a full disk
        self.digests: dict[int, str] | None = None  # inode -> sha256 of the content, when recording
        self.allow_devices = allow_devices
        self.dirs: dict[bytes, int] = {b"": root}  # open directory descriptors by relative path
        self.times: dict[bytes, int] = {}  # directory -> mtime (ns), set once its content is written
        self.entries = 0
        self.diff: hashlib._Hash | None = None  # None: plain tar, the diff id is the digest
        self.buf = b""
        self.pos = 0
        self.name = b""  # the entry being read, for messages
        self.compression = "tar"
        self.chunks: Iterator[bytes] | None = None  # the tar stream
        self.raw: _RawReader | None = None
        self.progress: Callable[[int], None] | None = None
        self.reported = 0
        self.queue: queue.Queue[bytes | Exception] | None = None
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.eof = False
        self.empty: type[Exception] = Exception  # queue.Empty, once the thread starts
        self.errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError)
        self.uid, self.gid = os.geteuid(), os.getegid()  # the owner of the files we make
        self.setgid_dirs: set[bytes] = set()  # directories whose new files take the directory's group
        if os.fstat(root).st_mode & stat.S_ISGID:
            self.setgid_dirs.add(b"")
        self.chmod_bits = _chmod_bits(root)

    # ------------------------------------------------------------------ input
    def open_source(self, raw: _RawReader, diff_algo: str, progress: Callable[[int], None] | None) -> None:
        """Detect the compression from the magic bytes and stack the matching decompressor."""
        self.raw = raw
        self.progress = progress
        magic = raw.peek_magic()
        blob: Any = raw  # the decompressors call only its read()
        if magic[:2] == b"\x1f\x8b":
            import zlib

            self.compression = "gzip"
            self.chunks = _gunzip(raw)
            self.errors = (OSError, EOFError, ValueError, zlib.error)
        elif magic[:3] == b"BZh":
            import bz2

            self.compression = "bzip2"
            self.chunks = _reads(bz2.BZ2File(blob).read)
        elif magic == b"\xfd7zXZ\0":
            import lzma

            self.compression = "xz"
            self.chunks = _reads(lzma.LZMAFile(blob).read)
            self.errors = (OSError, EOFError, ValueError, lzma.LZMAError)
        elif magic[:4] == b"\x28\xb5\x2f\xfd":
            import importlib

            try:
                zstandard = importlib.import_module("zstandard")
            except ImportError:
                raise ImageError(
                    f"{self.label} is zstd-compressed, and reading zstd needs the zstandard module: "
                    "pip install zstandard (in isolate's Python environment)"
                ) from None
            self.compression = "zstd"
            reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True, closefd=False)
            self.chunks = _reads(reader.read)
            self.errors = (OSError, EOFError, ValueError, zstandard.ZstdError)
        else:
            self.chunks = _reads(raw.read)
            return
        self.diff = hashlib.new(diff_algo)

    def start(self) -> None:
        """Read, hash and decompress in a thread: zlib, lzma, bz2 and hashlib release the GIL."""
        import queue
        import threading

        self.empty = queue.Empty

        self.queue = queue.Queue(_QUEUE)
        self.thread = threading.Thread(target=self._produce, name="isolate-unpack", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        """The reading thread: puts the tar stream's chunks in the queue, then b"" (or an exception)."""
        import queue

        assert self.chunks is not None and self.queue is not None and self.raw is not None
        chunks, diff, put = self.chunks, self.diff, self.queue.put
        while True:
            item: bytes | Exception
            try:
                item = next(chunks, b"")
                if item and diff is not None:
                    diff.update(item)
                elif not item and diff is not None:
                    while self.raw.read(CHUNK):  # what follows the compressed stream, for the digest
                        pass
            except Exception as exc:  # noqa: BLE001 - raised again by the unpacking thread
                item = exc
            while not self.stopping:
                try:
                    put(item, timeout=0.05)
                    break
                except queue.Full:
                    pass
            if self.stopping or not isinstance(item, bytes) or not item:
                return

    def _chunk(self) -> bytes:
        """The next piece of the tar stream (b"" at its end), hashed by the reading thread."""
        if self.eof:
            return b""
        assert self.queue is not None and self.raw is not None and self.thread is not None
        while True:
            try:
                item = self.queue.get(timeout=1)
                break
            except self.empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise ImageError(f"{self.label}: the thread reading the layer ended unexpectedly") from None
        if self.progress is not None and self.raw.size - self.reported >= CHUNK:
            self.reported = self.raw.size
            self.progress(self.reported)
        if isinstance(item, bytes):
            self.eof = not item
            return item
        self.eof = True
        if isinstance(item, self.errors):
            raise self._corrupt(f"{self.compression} data: {item}")
        raise item

    def _fill(self, need: int) -> bool:
        """At least ``need`` bytes in the buffer from ``pos``; False when the stream ends first."""
        have = len(self.buf) - self.pos
        parts = [self.buf[self.pos :]] if have else []
        while have < need:
            data = self._chunk()
            if not data:
                self.buf, self.pos = b"".join(parts), 0
                return False
            parts.append(data)
            have += len(data)
        self.buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos = 0
        return True

    def _skip(self, size: int) -> None:
        while size:
            have = len(self.buf) - self.pos
            if not have:
                if not self._fill(1):
                    raise self._truncated()
                have = len(self.buf)
            step = min(have, size)
            self.pos += step
            size -= step

    def _copy(self, fd: int, size: int, hasher: hashlib._Hash | None = None) -> None:
        """Write the next ``size`` bytes of the stream to ``fd`` (and to ``hasher``), then skip the
        block padding."""
        padding = -size % _BLOCK
        write = os.write
        while size:
            have = len(self.buf) - self.pos
            if not have:
                if not self._fill(1):
                    raise self._truncated()
                have = len(self.buf)
            step = min(have, size)
            view = memoryview(self.buf)[self.pos : self.pos + step]
            if hasher is not None:
                hasher.update(view)  # the bytes are in memory now: hashing them costs no read
            done = write(fd, view)
            while done < step:  # a short write: only when the disk is nearly full
                done += write(fd, view[done:])
            self.pos += step
            size -= step
        if padding:
            self._skip(padding)

    def _meta(self, size: int, what: str) -> bytes:
        """The data of an extended header, at most MAX_META bytes."""
        if size > MAX_META:
            raise self._refuse(f"has a {what} of {size} bytes, more than the {MAX_META >> 20} MiB allowed")
        padded = size + (-size % _BLOCK)
        if len(self.buf) - self.pos < padded and not self._fill(padded):
            raise self._truncated()
        data = self.buf[self.pos : self.pos + size]
        self.pos += padded
        return data

    def drain(self) -> None:
        """Read what follows the end of the archive (block padding), so the digests cover it all."""
        while self._chunk():
            pass

    # ------------------------------------------------------------------ errors
    def _refuse(self, problem: str, name: bytes | None = None) -> ImageError:
        shown = _show(self.name if name is None else name)
        return ImageError(f"{self.label}: entry '{shown}' {problem}; refusing this image")

    def _corrupt(self, problem: str) -> ImageError:
        where = f" at entry '{_show(self.name)}'" if self.name else ""
        return ImageError(
            f"{self.label}: corrupt or truncated layer ({problem}){where}; "
            "the download or archive is damaged: pull or import the image again"
        )

    def _truncated(self) -> ImageError:
        return self._corrupt("unexpected end of data")

    # ------------------------------------------------------------------ the archive
    def run(self) -> None:
        """Read every header and extract its entry, until the end-of-archive block."""
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[bytes, bytes] | None = None
        first = True
        while True:
            if len(self.buf) - self.pos < _BLOCK and not self._fill(_BLOCK):
                if self.pos == len(self.buf):
                    return  # the archive ends without its end marker, at a block boundary: accepted like tar
                raise self._truncated()
            pos = self.pos
            header = self.buf[pos : pos + _BLOCK]
            self.pos = pos + _BLOCK
            if header == _ZERO_BLOCK:
                return
            self.name = name = header[:100].split(b"\0", 1)[0]
            try:  # the common case inline: octal text ended by NUL or space
                checksum = int(header[148:156].rstrip(b"\0 "), 8)
                size = int(header[124:136].rstrip(b"\0 "), 8)
            except ValueError:
                try:
                    checksum, size = _number(header[148:156]), _number(header[124:136])
                except ValueError:
                    checksum = size = -1
            computed = sum(header) - sum(header[148:156]) + 256
            if checksum != computed and checksum != computed - 256 * sum(b > 127 for b in header):
                if first:
                    self.name = b""
                    raise self._corrupt(f"not a tar archive{'' if self.diff else ', nor gzip, bzip2, xz or zstd'}")
                raise self._corrupt("bad header checksum")
            if size < 0:
                raise self._corrupt("bad size field")
            first = False
            kind = header[156:157]

            # Extended headers describe the next entry.  Global pax headers are read and ignored,
            # as by Go's archive/tar and docker, which made most images.
            if kind == _PAX or kind == _PAX_GLOBAL:
                data = self._meta(size, "pax header")
                try:
                    records = _parse_pax(data)
                except ValueError:
                    raise self._corrupt("bad pax header") from None
                if kind == _PAX:
                    pax = records if pax is None else {**pax, **records}
                continue
            if kind == _GNU_LONGNAME or kind == _GNU_LONGLINK:
                data = self._meta(size, "GNU long name").split(b"\0", 1)[0]
                if kind == _GNU_LONGNAME:
                    long_name = data
                else:
                    long_link = data
                continue

            linkname = header[157:257].split(b"\0", 1)[0]
            if header[257:263] == b"ustar\0":  # POSIX: a long name is split into prefix/name
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            if long_name is not None:
                name, long_name = long_name, None
            if long_link is not None:
                linkname, long_link = long_link, None
            try:
                mode = int(header[100:108].rstrip(b"\0 "), 8) & 0o7777
                uid = int(header[108:116].rstrip(b"\0 "), 8)
                gid = int(header[116:124].rstrip(b"\0 "), 8)
                mtime = int(header[136:148].rstrip(b"\0 "), 8) * 1_000_000_000
            except ValueError:
                try:
                    mode = _number(header[100:108]) & 0o7777
                    uid, gid = _number(header[108:116]), _number(header[116:124])
                    mtime = _number(header[136:148]) * 1_000_000_000
                except ValueError:
                    raise self._corrupt("bad numeric field") from None
            xattrs: dict[bytes, bytes] | None = None
            if pax is not None:
                records, pax = pax, None
                try:
                    for key, value in records.items():
                        if key == b"path":
                            name = value or name
                        elif key == b"linkpath":
                            linkname = value or linkname
                        elif not value:
                            continue
                        elif key == b"size":
                            size = int(value)
                        elif key == b"uid":
                            uid = int(value)
                        elif key == b"gid":
                            gid = int(value)
                        elif key == b"mtime":
                            mtime = _pax_time(value)
                        elif key.startswith(b"SCHILY.xattr."):
                            if xattrs is None:
                                xattrs = {}
                            xattrs[key[13:]] = value
                        elif key.startswith(b"GNU.sparse."):
                            kind = b"S"
                except ValueError:
                    raise self._corrupt("bad pax record value") from None
                if size < 0:
                    raise self._corrupt("bad size in pax header")
            self.name = name
            if kind == b"\0" and name.endswith(b"/"):
                kind = _DIR  # pre-POSIX archives mark directories with a trailing slash
            self.entries += 1
            if kind in _REGULAR:
                self._regular(name, mode, uid, gid, mtime, size, xattrs)
            else:
                self._special(kind, name, linkname, mode, uid, gid, mtime, xattrs, header)

    # ------------------------------------------------------------------ paths
    def _key(self, name: bytes, link: bytes | None = None) -> bytes:
        """``name`` as a clean relative path (b"" for the layer root); hostile names refused.

        With ``link`` the name is the target of that hard link entry, for the messages.
        """
        short = name[2:] if name[:2] == b"./" else name
        if (  # the common case: nothing to clean
            short[:1] not in b"/."
            and b"/." not in short
            and b"//" not in short
            and short[-1:] != b"/"
            and b"\0" not in short
            and len(short) < PATH_MAX
        ):
            return short
        what = "has a name that" if link is None else f"is a hard link to '{_show(link)}', which"
        if b"\0" in name:
            raise self._refuse(f"{what} contains a NUL byte")
        if name.startswith(b"/"):
            raise self._refuse(f"{what} leaves the layer (an absolute path)")
        parts = [p for p in name.split(b"/") if p and p != b"."]
        if b".." in parts:
            raise self._refuse(f"{what} leaves the layer (a '..' component)")
        key = b"/".join(parts)
        if len(key) >= PATH_MAX:
            raise self._refuse(f"{what} is longer than PATH_MAX ({PATH_MAX} bytes)")
        return key

    def _dir(self, key: bytes, create: bool = True) -> int:
        """A descriptor of the directory ``key``, opened without following any symlink.

        Missing directories are made (mode 0755) when ``create``; a component that is not a
        directory (a symlink, a file) is refused.  The descriptor belongs to the cache.
        """
        fd = self.dirs.get(key)
        if fd is not None:
            return fd
        if len(self.dirs) >= _FD_CACHE:
            self._close_dirs()
        # Start from the longest open ancestor.
        base = key
        while True:
            cut = base.rfind(b"/")
            base = base[:cut] if cut > 0 else b""
            fd = self.dirs.get(base)
            if fd is not None:
                break
        path = base
        for part in (key[len(base) + 1 :] if base else key).split(b"/"):
            path = path + b"/" + part if path else part
            made = False
            try:
                new = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                new = os.open(part, _DIR_FLAGS, dir_fd=fd)
                made = True
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise self._refuse(
                        f"goes through '{_show(path)}', which is a symlink or not a directory in this layer: "
                        "writing through it could leave the layer"
                    ) from None
                raise
            if len(self.dirs) >= 4 * _FD_CACHE:  # a very deep path: keep only the way down
                self._close_dirs()
            self.dirs[path] = fd = new
            if made:  # a parent with no entry of its own (yet)
                os.fchmod(new, 0o755)  # whatever the umask
                self.setgid_dirs.discard(path)
        return fd

    def _close_dirs(self) -> None:
        for key, fd in self.dirs.items():
            if key:
                os.close(fd)
        self.dirs = {b"": self.root}

    def _forget(self, key: bytes) -> None:
        """Drop the cached descriptors and pending times of ``key`` and below: it is being removed."""
        under = key + b"/"
        for k in [k for k in self.dirs if k == key or k.startswith(under)]:
            os.close(self.dirs.pop(k))
        for k in [k for k in self.times if k == key or k.startswith(under)]:
            del self.times[k]
        self.setgid_dirs = {k for k in self.setgid_dirs if k != key and not k.startswith(under)}

    def _clear(self, parent: int, base: bytes, key: bytes) -> None:
        """Remove what is at ``base`` in ``parent`` (inside dest) so a new entry can take its place."""
        st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(base, dir_fd=parent)
            return
        import shutil

        self._forget(key)
        # /proc/self/fd/N is the parent itself; rmtree works by descriptors without following symlinks.
        shutil.rmtree(b"/proc/self/fd/%d/%s" % (parent, base))

    def _xattrs(self, target: int | bytes, xattrs: dict[bytes, bytes], follow: bool = True) -> None:
        for key, value in xattrs.items():
            if key.startswith(_FORGED_XATTRS):
                continue
            if key == b"system.posix_acl_default":  # new files' modes now depend on it, not the umask
                self.chmod_bits = 0o7777
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in _IGNORED_XATTR_ERRORS:
                    raise

    # ------------------------------------------------------------------ entries
    def _regular(
        self, name: bytes, mode: int, uid: int, gid: int, mtime: int, size: int, xattrs: dict[bytes, bytes] | None
    ) -> None:
        key = self._key(name)
        parent_key, _, base = key.rpartition(b"/")
        if not base:
            raise self._refuse("is not a directory, but names the layer root")
        if base.startswith(_WHITEOUT):
            self._skip(size + (-size % _BLOCK))
            self._whiteout(parent_key, base)
            return
        fd = -1
        try:
            parent = self.dirs.get(parent_key)
            if parent is None:
                parent = self._dir(parent_key)
            try:
                fd = os.open(base, _FILE_FLAGS, mode & 0o777, dir_fd=parent)
            except FileExistsError:
                self._clear(parent, base, key)
                fd = os.open(base, _FILE_FLAGS, mode & 0o777, dir_fd=parent)
            if self.digests is not None:
                hasher = hashlib.sha256()
                if size:
                    self._copy(fd, size, hasher)
                # by inode: a hard link made later shares it, a file replaced later gets its own
                self.digests[os.fstat(fd).st_ino] = hasher.hexdigest()
            elif size:
                self._copy(fd, size)
            # Two syscalls saved on most files: a new file already has our ids (unless its
            # directory is setgid) and its mode (unless the umask took bits, or it is special).
            if uid != self.uid or gid != self.gid or parent_key in self.setgid_dirs:
                os.fchown(fd, uid, gid)  # before chmod: chown clears setuid and setgid
            if mode & self.chmod_bits:
                os.fchmod(fd, mode)
            if xattrs:
                self._xattrs(fd, xattrs)  # after chown, which drops security.capability
            os.utime(fd, ns=(mtime, mtime))
        except (OSError, OverflowError) as exc:
            raise self._failed(exc) from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _failed(self, exc: OSError | OverflowError) -> ImageError:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            full = DiskFullError(
                f"{self.label}: cannot extract entry '{_show(self.name)}': the disk holding "
                f"{self.dest or 'the layer'} is full ({problem}); free space there and try again"
            )
            full.entry = _show(self.name)
            return full
        return ImageError(f"{self.label}: cannot extract entry '{_show(self.name)}': {problem}")

    def _whiteout(self, parent_key: bytes, base: bytes) -> None:
        """``.wh..wh..opq``: the directory is opaque; ``.wh.NAME``: a 0/0 character device NAME."""
        try:
            if base == _OPAQUE:
                os.setxattr(self._dir(parent_key), b"trusted.overlay.opaque", b"y")
                return
            if base.startswith(_OPAQUE[:8]):  # other .wh..wh. names: aufs metadata, meaningless here
                return
            hidden = base[len(_WHITEOUT) :]
            if hidden in (b"", b".", b".."):
                raise self._refuse("is a whiteout with no name")
            parent = self._dir(parent_key)
            device = stat.S_IFCHR
            try:
                os.mknod(hidden, device, os.makedev(0, 0), dir_fd=parent)
            except FileExistsError:
                self._clear(parent, hidden, parent_key + b"/" + hidden if parent_key else hidden)
                os.mknod(hidden, device, os.makedev(0, 0), dir_fd=parent)
        except OSError as exc:
            raise self._failed(exc) from None

    def _special(
        self,
        kind: bytes,
        name: bytes,
        linkname: bytes,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
        xattrs: dict[bytes, bytes] | None,
        header: bytes,
    ) -> None:
        """Directories, links, fifos and devices."""
        if kind not in (_DIR, _SYMLINK, _HARDLINK, _FIFO, _CHR, _BLK):
            what = _TYPE_NAMES.get(kind, f"of unknown type {kind.decode('latin-1')!r}")
            raise self._refuse(f"is {what}, which isolate does not unpack")
        key = self._key(name)
        parent_key, _, base = key.rpartition(b"/")
        if base.startswith(_WHITEOUT):
            self._whiteout(parent_key, base)
            return
        device = 0
        if kind == _CHR or kind == _BLK:
            major, minor = _number(header[329:337]), _number(header[337:345])
            # mknod(2) takes a 12-bit major and a 20-bit minor; os.makedev wraps a negative one
            if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
                raise self._corrupt(f"bad device number {major}:{minor}")
            device = os.makedev(major, minor)
            if device and not self.allow_devices:  # 0/0 is a whiteout, not a device
                raise self._refuse(
                    f"is a {'character' if kind == _CHR else 'block'} device "
                    f"({os.major(device)}, {os.minor(device)}); device nodes are refused unless allowed"
                )
        try:
            if kind == _DIR:
                self._directory(key, mode, uid, gid, mtime, xattrs)
                return
            if not base:
                raise self._refuse("is not a directory, but names the layer root")
            if kind == _HARDLINK:
                self._hardlink(key, base, parent_key, linkname)
                return
            parent = self._dir(parent_key)
            if kind == _SYMLINK:
                if b"\0" in linkname:
                    raise self._refuse("is a symlink whose target contains a NUL byte")
                try:
                    os.symlink(linkname, base, dir_fd=parent)
                except FileExistsError:
                    self._clear(parent, base, key)
                    os.symlink(linkname, base, dir_fd=parent)
            else:
                kind_bits = stat.S_IFIFO if kind == _FIFO else stat.S_IFCHR if kind == _CHR else stat.S_IFBLK
                try:
                    os.mknod(base, kind_bits | 0o600, device, dir_fd=parent)
                except FileExistsError:
                    self._clear(parent, base, key)
                    os.mknod(base, kind_bits | 0o600, device, dir_fd=parent)
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            if kind != _SYMLINK:
                os.chmod(base, mode, dir_fd=parent)  # just made by mknod: not a symlink
            if xattrs:
                self._xattrs(b"/proc/self/fd/%d/%s" % (parent, base), xattrs, follow=False)
            os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        except (OSError, OverflowError) as exc:
            raise self._failed(exc) from None

    def _directory(
        self, key: bytes, mode: int, uid: int, gid: int, mtime: int, xattrs: dict[bytes, bytes] | None
    ) -> None:
        fd = self.dirs.get(key)
        if fd is None and key:
            parent_key, _, base = key.rpartition(b"/")
            parent = self._dir(parent_key)
            try:
                os.mkdir(base, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(base, dir_fd=parent)
                    os.mkdir(base, 0o700, dir_fd=parent)
            fd = self._dir(key)
        elif fd is None:
            fd = self.root
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        if mode & stat.S_ISGID:
            self.setgid_dirs.add(key)
        else:
            self.setgid_dirs.discard(key)
        if xattrs:
            self._xattrs(fd, xattrs)
        self.times[key] = mtime

    def _hardlink(self, key: bytes, base: bytes, parent_key: bytes, linkname: bytes) -> None:
        target = self._key(linkname, linkname)
        target_parent, _, target_base = target.rpartition(b"/")
        if not target_base:
            raise self._refuse("is a hard link to the layer root")
        if target == key:
            return
        missing = f"is a hard link to '{_show(linkname)}', which is not an earlier entry of this layer"
        try:
            source = os.dup(self._dir(target_parent, create=False))
        except FileNotFoundError:
            raise self._refuse(missing) from None
        try:
            parent = self._dir(parent_key)
            try:
                os.link(target_base, base, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                self._clear(parent, base, key)
                os.link(target_base, base, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise self._refuse(missing) from None
        except PermissionError:
            raise self._refuse(f"is a hard link to '{_show(linkname)}', a directory") from None
        finally:
            os.close(source)

    # ------------------------------------------------------------------ the end
    def finish_dirs(self) -> None:
        """Directory times, set last: writing their content changed them."""
        self.name = b""
        try:
            for key, mtime in self.times.items():
                self.name = key or b"."
                os.utime(self._dir(key, create=False), ns=(mtime, mtime))
        except (OSError, OverflowError) as exc:
            raise self._failed(exc) from None
        self.name = b""

    def close(self) -> None:
        """Stop the reading thread (it no longer touches the stream once this returns), close the fds."""
        self.stopping = True
        if self.thread is not None:
            self.thread.join()
        self._close_dirs()
        os.close(self.root)
