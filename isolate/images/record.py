"""What a layer held when it was unpacked: the record ``isolate image verify`` checks it against.

The store writes ``layers/<hex>/files`` next to each layer it unpacks: one entry per file,
directory, link or node of the layer, the layer's root (``.``) first, each entry::

    KIND MODE UID GID MTIME_NS DATA XATTRS PATH\\0

``KIND`` is ``d`` (directory), ``f`` (regular file), ``l`` (symlink), ``c`` / ``b`` (devices,
whiteouts are ``c`` 0:0), ``p`` (fifo) or ``s`` (socket); ``MODE`` the permission bits in
octal (setuid, setgid and sticky included); ``DATA`` is ``SIZE:SHA256`` for a file, the target
in hex for a symlink, ``MAJOR:MINOR`` for a device and ``-`` otherwise; ``XATTRS`` is ``-`` or
a sha256 (first 32 hex digits) over the sorted extended attributes (overlayfs's opaque marker,
file capabilities, ACLs), ``security.selinux`` aside (the host's policy sets it, not the
layer).  ``PATH`` is the raw name relative to the layer's root; a name holds no NUL.

Why these fields: content, type, owner and mode are what a sandbox sees of a file; the size and
the sha256 of the content catch a file changed in place, the walk catches one added or deleted,
and the mtime (which tar sets) a change undone by hand.  The content is hashed while it is
unpacked (from memory: no second read), and a walk of the new layer writes the rest; ``meta.json``
keeps the record's own digest, so a damaged record is told from a damaged layer.

Walking never follows a symlink: every directory is opened relative to its parent with
``O_NOFOLLOW | O_DIRECTORY``, every file with ``O_NOFOLLOW | O_NONBLOCK`` (a fifo put in a file's
place does not block the walk), so a layer altered into ``link -> /`` is reported as altered,
never read through.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

FILE = "files"  # layers/<hex>/files
FORMAT = 1
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "f",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
_HOST_XATTRS = frozenset({b"security.selinux"})
_CHUNK = 1 << 20

# The fields of an entry, for messages: (index in the split line, what differs).
FIELDS = ((0, "type"), (1, "mode"), (2, "owner"), (3, "group"), (4, "mtime"), (5, "content"), (6, "xattrs"))


_XATTR_ERRNOS = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODATA)  # none, or not supported here


def hash_fd(fd: int, buf: bytearray | None = None) -> tuple[int, str]:
    """(bytes read, sha256 hex) of what ``fd`` reads from where it is to its end."""
    buf = buf if buf is not None else bytearray(_CHUNK)
    view = memoryview(buf)
    hasher = hashlib.sha256()
    size = 0
    while True:
        n = os.readv(fd, [buf])
        if not n:
            return size, hasher.hexdigest()
        hasher.update(view[:n])
        size += n


def _xattrs(target: int | bytes) -> str:
    """``-`` or a digest of the extended attributes of ``target`` (an fd, or a path not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _XATTR_ERRNOS:
            return "-"
        raise
    names = sorted(n for n in names if os.fsencode(n) not in _HOST_XATTRS)
    if not names:
        return "-"
    hasher = hashlib.sha256()
    for name in names:
        try:
            value = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in _XATTR_ERRNOS:
                continue  # removed meanwhile
            raise
        hasher.update(os.fsencode(name) + b"\0" + value + b"\0")
    return hasher.hexdigest()[:32]


def _line(st: os.stat_result, data: str, xattrs: str) -> str:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "?")
    return f"{kind} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid} {st.st_mtime_ns} {data} {xattrs}"


def scan(root: int, digests: dict[int, str] | None = None) -> Iterator[tuple[bytes, str]]:
    """(path, fields) of every entry below the directory ``root`` (an fd), the root itself first.

    A regular file's content digest comes from ``digests`` (by inode) when it is there, else
    from reading the file.  Never follows a symlink; raises OSError when an entry cannot be read.
    """
    buf = bytearray(_CHUNK)
    yield b".", _line(os.fstat(root), "-", _xattrs(root))
    yield from _walk(root, buf, digests)


def _walk(root: int, buf: bytearray, digests: dict[int, str] | None) -> Iterator[tuple[bytes, str]]:
    """The entries below ``root``, depth first; one descriptor open per level of the path.

    An entry that cannot be read is yielded with the fields ``! <why>`` (which match no record).
    """
    frames: list[tuple[int, bytes, list[bytes]]] = []
    try:
        frames.append((os.dup(root), b"", []))
        yield from _entries(frames[-1][0], b"", frames[-1][2], buf, digests)
        while frames:
            fd, prefix, subdirs = frames[-1]
            if not subdirs:
                frames.pop()
                os.close(fd)
                continue
            name = subdirs.pop()
            path = prefix + name
            try:
                sub = os.open(name, _DIR, dir_fd=fd)
            except OSError as exc:  # e.g. no longer a directory (ELOOP: now a symlink)
                yield path, f"! {exc.strerror}"
                continue
            frames.append((sub, path + b"/", []))
            try:
                yield path, _line(os.fstat(sub), "-", _xattrs(sub))
            except OSError as exc:
                yield path, f"! {exc.strerror}"
            yield from _entries(sub, path + b"/", frames[-1][2], buf, digests)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def _entries(
    fd: int, prefix: bytes, subdirs: list[bytes], buf: bytearray, digests: dict[int, str] | None
) -> Iterator[tuple[bytes, str]]:
    """The entries of the directory ``fd`` that are not directories; its subdirectories go to
    ``subdirs`` (visited by the caller, so that only the way down is open)."""
    try:
        with os.scandir(fd) as it:
            entries = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    except OSError as exc:
        yield (prefix or b"./")[:-1], f"! {exc.strerror}"
        return
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
            continue
        try:
            yield prefix + name, _entry(fd, name, buf, digests)
        except OSError as exc:
            yield prefix + name, f"! {exc.strerror}"


def _entry(fd: int, name: bytes, buf: bytearray, digests: dict[int, str] | None) -> str:
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    mode = st.st_mode
    proc = b"/proc/self/fd/%d/%s" % (fd, name)  # its directory by fd; the name itself is not followed
    if stat.S_ISREG(mode):
        known = digests.get(st.st_ino) if digests is not None else None
        if known is not None:
            return _line(st, f"{st.st_size}:{known}", _xattrs(proc))
        file = os.open(name, _READ, dir_fd=fd)
        try:
            st = os.fstat(file)  # what was opened, in case it changed since the lstat
            if not stat.S_ISREG(st.st_mode):
                return _line(st, "-", _xattrs(file))
            size, digest = hash_fd(file, buf)
            return _line(st, f"{size}:{digest}", _xattrs(file))
        finally:
            os.close(file)
    if stat.S_ISLNK(mode):
        data = os.fsencode(os.readlink(name, dir_fd=fd)).hex() or "-"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        data = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    else:
        data = "-"
    return _line(st, data, _xattrs(proc))


def encode(entries: Iterator[tuple[bytes, str]]) -> tuple[bytes, int]:
    """The record file's bytes and its number of entries."""
    parts = [f"{fields} ".encode() + path + b"\0" for path, fields in entries]
    return b"".join(parts), len(parts)


def decode(data: bytes) -> dict[bytes, str]:
    """path -> fields; ValueError when the record is malformed."""
    out: dict[bytes, str] = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        fields = item.split(b" ", 7)
        if len(fields) != 8:
            raise ValueError("an entry with fewer than 8 fields")
        out[fields[7]] = b" ".join(fields[:7]).decode("ascii")
    return out


_KIND_NAMES = {"d": "directory", "f": "file", "l": "symlink", "c": "character device", "b": "block device",
               "p": "fifo", "s": "socket"}  # fmt: skip


def differences(recorded: str, found: str) -> list[str]:
    """What differs between two entries' fields: "content", "mode 755 -> 777", ..."""
    if found.startswith("!"):
        return [f"cannot be read: {found[2:]}"]
    old, new = recorded.split(" "), found.split(" ")
    if old[0] != new[0]:
        return [f"was a {_KIND_NAMES.get(old[0], old[0])}, is a {_KIND_NAMES.get(new[0], new[0])}"]
    out = []
    for index, what in FIELDS[1:]:
        if old[index] != new[index]:
            if what in ("mode", "owner", "group"):
                out.append(f"{what} {old[index]} -> {new[index]}")
            elif what == "content" and old[0] == "l":
                out.append("symlink target")
            elif what == "content" and old[0] in "cb":
                out.append(f"device {old[index]} -> {new[index]}")
            else:
                out.append(what)
    return out
