"""The content-addressed image store: layers unpacked once, shared by every image that has them.

Layout under the store root (``/var/lib/isolate`` by default, ``--root`` / ``ISOLATE_ROOT``)::

    layers/<diff_id hex>/root     an unpacked layer in overlayfs format (an overlay lowerdir)
    layers/<diff_id hex>/meta.json  its digests and size, and the digest of its record
    layers/<diff_id hex>/files    the record of its files (isolate.images.record), for verify
    blobs/sha256/<hex>            image configs (JSON), by digest
    images.json                   image records: id (config digest), names, layers, config
    tmp/                          work in progress (same filesystem, so rename is atomic)
    locks/                        a lock file per layer, one for images.json, one for tmp/

A layer is unpacked into ``tmp/``, verified against its digests, recorded, then renamed into
``layers/``: a crash or a bad archive never leaves a half-imported layer where an image
could use it.  Two imports of images sharing a layer serialize on that layer's lock and
the second finds it done.  Each directory of ``tmp/`` is locked (flock) by the process that
works in it for as long as it exists, so one whose lock is free was left by a process that
died: ``image prune`` and ``image verify --repair`` remove those, and only those.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time

from isolate import faults
from isolate.errors import ConfigError
from isolate.images.unpack import FULL_ERRNOS, DiskFullError, ImageError, LayerInfo, unpack_layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any, BinaryIO

_TMP_NAME = ".tmp-"  # what _write_atomic puts in the name of a file it has not renamed yet

DEFAULT_ROOT = "/var/lib/isolate"


def default_root() -> str:
    return os.environ.get("ISOLATE_ROOT", DEFAULT_ROOT)


_HEX = frozenset("0123456789abcdef")


def hex_of(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or not _HEX.issuperset(value):
        raise ImageError(f"{digest!r}: not a sha256 digest; the image is malformed")
    return value


def parse_ref(name: str) -> str:
    """``NAME[:TAG]`` with the tag defaulting to latest (a registry port is not a tag)."""
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"{name!r}: not an image name; use NAME[:TAG], e.g. busybox:latest")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def check_config(config: Any, what: str = "image config") -> dict[str, Any]:
    """``config`` if the parts of it a run reads have their types (image-spec config.md): a
    hostile or broken image is refused at import, not by a traceback at run time."""
    if not isinstance(config, dict):
        raise ImageError(f"{what}: not a JSON object; the image is malformed")
    run = config.get("config")
    if run is not None and not isinstance(run, dict):
        raise ImageError(f"{what}: config is not a JSON object; the image is malformed")
    for key in ("Entrypoint", "Cmd", "Env"):
        value = (run or {}).get(key)
        if value is not None and not (isinstance(value, list) and all(_text(v) for v in value)):
            raise ImageError(f"{what}: config.{key} is not a list of strings; the image is malformed")
    for key in ("WorkingDir", "User"):
        value = (run or {}).get(key)
        if value is not None and not _text(value):
            raise ImageError(f"{what}: config.{key} is not a string; the image is malformed")
    return config


def _text(value: Any) -> bool:
    return isinstance(value, str) and "\0" not in value


class Image:
    """One image of the store: its id (config digest), names, layers bottom first, and config."""

    __slots__ = ("id", "names", "layers", "config", "created", "source")

    def __init__(
        self,
        id: str,
        names: list[str],
        layers: list[str],
        config: dict[str, Any],
        created: float,
        source: str = "",
    ) -> None:
        self.id = id
        self.names = names
        self.layers = layers  # diff ids, bottom first
        self.config = config  # the OCI image config document
        self.created = created
        self.source = source

    @property
    def run_config(self) -> dict[str, Any]:
        """The "config" part of the image config: Env, Entrypoint, Cmd, WorkingDir, User."""
        return dict(check_config(self.config, f"image {self.id}").get("config") or {})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class ImageStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_root())

    # ------------------------------------------------------------------ paths and locks
    def layer_dir(self, diff_id: str) -> str:
        """The overlay lowerdir of a layer."""
        return os.path.join(self.root, "layers", hex_of(diff_id), "root")

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_dir(diff_id))

    def has_record(self, diff_id: str) -> bool:
        """Whether the layer has the record of its files that verify checks (layers unpacked
        before isolate wrote one have none)."""
        from isolate.images import record as layer_record  # not on the path of a run

        return os.path.isfile(os.path.join(os.path.dirname(self.layer_dir(diff_id)), layer_record.FILE))

    def _lock_fd(self, name: str, shared: bool = False) -> int:
        """A descriptor holding the lock file ``locks/NAME``, waiting for it (the caller closes it)."""
        locks = os.path.join(self.root, "locks")
        os.makedirs(locks, 0o700, exist_ok=True)
        fd = os.open(os.path.join(locks, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lock(self, name: str, shared: bool = False) -> AbstractContextManager[None]:
        from contextlib import contextmanager

        @contextmanager
        def held() -> Iterator[None]:
            fd = self._lock_fd(name, shared)
            try:
                yield
            finally:
                os.close(fd)

        return held()

    def work_dir(self) -> AbstractContextManager[str]:
        """A new directory in ``tmp/``, locked while the ``with`` block runs, then removed.

        The lock (flock on the directory itself) tells a directory in use from one a killed
        process left: see :meth:`dead_temporaries`.  It is taken while ``locks/tmp`` is held
        shared, and the scan holds that lock exclusively, so no directory is seen between its
        mkdir and its lock.
        """
        from contextlib import contextmanager

        @contextmanager
        def made() -> Iterator[str]:
            tmp = os.path.join(self.root, "tmp")
            os.makedirs(tmp, 0o700, exist_ok=True)
            with self._lock("tmp", shared=True):
                path = os.path.join(tmp, os.urandom(8).hex())
                os.mkdir(path, 0o700)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except BaseException:
                    os.rmdir(path)
                    raise
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
                os.close(fd)

        return made()

    def dead_temporaries(self) -> Iterator[str]:
        """Paths in ``tmp/`` (and unfinished atomic writes of images.json and blobs) that no live
        process works in: a crash or a kill left them.  The caller holds none of the store's locks."""
        tmp = os.path.join(self.root, "tmp")
        if os.path.isdir(tmp):
            with self._lock("tmp"):
                for entry in sorted(os.listdir(tmp)):
                    path = os.path.join(tmp, entry)
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                    except FileNotFoundError:
                        continue
                    except OSError:
                        yield path  # a symlink, or unreadable: nothing isolate made
                        continue
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # an import (or a removal) is working in it
                    finally:
                        os.close(fd)
                    yield path
        # images.json and blobs are written (atomically, through a temporary name) only under
        # the images lock: while it is held, such a name is a write that died.
        with self._lock("images", shared=True):
            found = [
                os.path.join(directory, entry)
                for directory in (self.root, os.path.join(self.root, "blobs", "sha256"))
                if os.path.isdir(directory)
                for entry in sorted(os.listdir(directory))
                if _TMP_NAME in entry
            ]
        yield from found

    def failure(self, what: str, exc: OSError | ImageError) -> ImageError:
        """One line for an error while writing the store; a full disk says so, and where."""
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS):
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "No space left on device"
            at = f", writing entry '{exc.entry}'" if isinstance(exc, DiskFullError) and exc.entry else ""
            return DiskFullError(
                f"{what}: the disk holding the image store {self.root} is full: {why}{at}; free space "
                "there or use a store with room (--root or ISOLATE_ROOT), then import again"
            )
        if isinstance(exc, ImageError):
            return exc
        where = f" ({exc.filename})" if exc.filename else ""
        return ImageError(f"{what}: {exc.strerror or exc}{where}")

    # ------------------------------------------------------------------ layers
    def add_layer(
        self,
        open_blob: Callable[[], BinaryIO],
        diff_id: str | None = None,
        digest: str | None = None,
        progress: Callable[[int], None] | None = None,
        what: str = "",
    ) -> str:
        """Unpack a layer blob unless the store has it; returns its diff id.

        ``what`` names the layer in errors (default: its digest).  ``open_blob`` is called only
        when the layer must be read.  With a known ``diff_id``
        (from the image config) an existing layer is reused without reading anything, unless
        it has no record of its files (it was unpacked before isolate wrote them) and no
        sandbox uses it: then it is unpacked again, with its record.
        """
        name = f"layer-{hex_of(diff_id)}" if diff_id else "layer-unknown"
        if diff_id is not None and self.has_layer(diff_id):
            if self.has_record(diff_id):
                return diff_id
            lock = self._try_exclusive(name)
            if lock is None:
                return diff_id  # no record, but a sandbox uses it: it is not replaced under it
        else:
            lock = self._lock_fd(name)
        what = what or (f"layer {(digest or diff_id or '')[:19]}".rstrip())
        phase = "unpacking it into the store"
        try:
            if diff_id is not None and self.has_layer(diff_id) and self.has_record(diff_id):
                return diff_id  # another import finished it while we waited
            with self.work_dir() as work:
                faults.point("import:layer")
                os.mkdir(os.path.join(work, "root"), 0o755)
                digests: dict[int, str] = {}
                with open_blob() as blob:
                    info = unpack_layer(
                        blob,
                        os.path.join(work, "root"),
                        expected_digest=digest,
                        expected_diff_id=diff_id,
                        progress=progress,
                        file_digests=digests,
                    )
                phase = "recording its files and moving it into the store"
                return self._commit_layer(work, info, digests, locked=diff_id is not None)
        except (OSError, DiskFullError) as exc:
            raise self.failure(f"{what}: {phase}", exc) from None
        finally:
            os.close(lock)

    def _commit_layer(self, work: str, info: LayerInfo, digests: dict[int, str], locked: bool) -> str:
        """Record the unpacked layer in ``work`` and rename it into ``layers/`` (``locked``: the
        caller holds the layer's lock)."""
        from isolate.images import record as layer_record

        target = os.path.dirname(self.layer_dir(info.diff_id))
        root = os.open(os.path.join(work, "root"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            files, count = layer_record.encode(layer_record.scan(root, digests))
        finally:
            os.close(root)
        with open(os.path.join(work, layer_record.FILE), "wb") as f:
            f.write(files)
        meta = {
            "diff_id": info.diff_id,
            "digest": info.digest,
            "size": info.size,
            "entries": info.entries,
            "files": {"format": layer_record.FORMAT, "entries": count, "sha256": hashlib.sha256(files).hexdigest()},
        }
        with open(os.path.join(work, "meta.json"), "w") as f:
            json.dump(meta, f)
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        faults.point("import:commit")
        if os.path.isdir(target) and not os.path.isfile(os.path.join(target, layer_record.FILE)):
            self._replace_unrecorded(target, locked)
        try:
            os.rename(work, target)
        except OSError:
            if not os.path.isdir(target):  # not "someone else committed the same layer first"
                raise
        return info.diff_id

    def _replace_unrecorded(self, target: str, locked: bool) -> None:
        """Move a layer that has no record out of the way of its recorded copy, unless a sandbox
        uses it.  Under the layer's lock, held exclusively: none can start on it meanwhile."""
        lock = -1
        if not locked:
            found = self._try_exclusive(f"layer-{os.path.basename(target)}")
            if found is None:
                return  # in use: the new copy is dropped, the old one stays
            lock = found
        try:
            with self.work_dir() as doomed:
                os.rename(target, os.path.join(doomed, "layer"))
        finally:
            if lock >= 0:
                os.close(lock)

    def layer_meta(self, diff_id: str) -> dict[str, Any]:
        try:
            with open(os.path.join(os.path.dirname(self.layer_dir(diff_id)), "meta.json")) as f:
                return json.load(f)  # type: ignore[no-any-return]
        except OSError:
            return {}

    # ------------------------------------------------------------------ blobs and images
    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = os.path.join(self.root, "blobs", "sha256", hex_of(digest))
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            _write_atomic(path, data)
        return digest

    def _records(self) -> dict[str, dict[str, Any]]:
        try:
            with open(os.path.join(self.root, "images.json")) as f:
                return json.load(f)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}

    def _save(self, records: dict[str, dict[str, Any]]) -> None:
        os.makedirs(self.root, 0o755, exist_ok=True)
        _write_atomic(os.path.join(self.root, "images.json"), json.dumps(records, indent=1, sort_keys=True).encode())

    def add_image(self, config: dict[str, Any], layers: list[str], names: list[str], source: str) -> Image:
        """Record an image whose layers are all in the store; a name moves to it from any other."""
        check_config(config)
        missing = [d for d in layers if not self.has_layer(d)]
        if missing:
            raise ImageError(f"layer {missing[0]} is not in the store; import it first")
        raw = json.dumps(config, sort_keys=True).encode()
        names = [parse_ref(n) for n in names]
        try:
            with self._lock("images"):  # blobs too are written under it: see dead_temporaries
                image_id = self.put_blob(raw)
                records = self._records()
                for record in records.values():
                    record["names"] = [n for n in record["names"] if n not in names]
                old = records.get(image_id, {})
                merged = list(dict.fromkeys(old.get("names", []) + names))
                records[image_id] = {
                    "id": image_id,
                    "names": merged,
                    "layers": layers,
                    "config": config,
                    "created": old.get("created", time.time()),
                    "source": source,
                }
                self._save(records)
        except OSError as exc:
            what = " ".join(names) or "sha256:" + hashlib.sha256(raw).hexdigest()
            raise self.failure(f"recording image {what} in the store", exc) from None
        return Image(**records[image_id])

    def images(self) -> list[Image]:
        return [Image(**r) for r in sorted(self._records().values(), key=lambda r: r["created"])]

    def get(self, name: str) -> Image:
        """An image by NAME[:TAG], by full id, or by a unique id prefix of 12 or more hex digits."""
        records = self._records()
        ref = parse_ref(name) if not _looks_like_id(name) else ""
        for record in records.values():
            if ref and ref in record["names"]:
                return Image(**record)
        if _looks_like_id(name):
            wanted = name.removeprefix("sha256:")
            found = [r for r in records.values() if r["id"].removeprefix("sha256:").startswith(wanted)]
            if len(found) == 1:
                return Image(**found[0])
        raise ConfigError(f"{name}: no such image; `isolate image ls` lists them, `isolate image import` adds one")

    def remove(self, name: str) -> list[str]:
        """Drop a name (or, given an id, the image); returns the layers freed with it."""
        image = self.get(name)
        with self._lock("images"):
            records = self._records()
            record = records[image.id]
            if not _looks_like_id(name):
                record["names"] = [n for n in record["names"] if n != parse_ref(name)]
            if _looks_like_id(name) or not record["names"]:
                del records[image.id]
            self._save(records)
            return self._drop_unused_layers(records)

    def prune(self) -> list[str]:
        """Remove images with no name and every layer no image uses; returns what went."""
        with self._lock("images"):
            records = self._records()
            dangling = [i for i, r in records.items() if not r["names"]]
            for image_id in dangling:
                del records[image_id]
            self._save(records)
            gone = [f"image {i}" for i in dangling]
            gone += [f"layer {d}" for d in self._drop_unused_layers(records)]
        for path in self.dead_temporaries():  # what crashed or killed imports and removals left
            _remove(path)
            gone.append(f"temporary {path}")
        return gone

    def _drop_unused_layers(self, records: dict[str, dict[str, Any]]) -> list[str]:
        used = {d for r in records.values() for d in r["layers"]}
        layers_dir = os.path.join(self.root, "layers")
        freed = []
        if os.path.isdir(layers_dir):
            for entry in sorted(os.listdir(layers_dir)):
                diff_id = f"sha256:{entry}"
                if diff_id not in used:
                    fd = self._try_exclusive(f"layer-{entry}")
                    if fd is None:
                        continue  # a running sandbox holds it (shared lock): prune frees it later
                    try:
                        self.remove_layer_dir(entry)
                    finally:
                        os.close(fd)
                    freed.append(diff_id)
        return freed

    def remove_layer_dir(self, entry: str) -> None:
        """Remove ``layers/ENTRY``; the caller holds its lock exclusively.  It leaves ``layers/`` first
        (one rename): a half-deleted layer must never be used."""
        with self.work_dir() as doomed:
            os.rename(os.path.join(self.root, "layers", entry), os.path.join(doomed, "layer"))

    def _try_exclusive(self, name: str) -> int | None:
        locks = os.path.join(self.root, "locks")
        os.makedirs(locks, 0o700, exist_ok=True)
        fd = os.open(os.path.join(locks, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def layer_lock_files(self, diff_ids: list[str]) -> list[str]:
        """Lock files a sandbox holds shared while it uses these layers (see _drop_unused_layers)."""
        return [os.path.join(self.root, "locks", f"layer-{hex_of(d)}") for d in diff_ids]

    def disk_usage(self, diff_id: str) -> int:
        return int(self.layer_meta(diff_id).get("size", 0))


def _looks_like_id(name: str) -> bool:
    value = name.removeprefix("sha256:")
    return 12 <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value)


def _remove(path: str) -> None:
    """Remove a file or a tree, never following a symlink."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}{_TMP_NAME}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
