"""The content-addressed image store: layers unpacked once, shared by every image that has them.

Layout under the store root (``/var/lib/isolate`` by default, ``--root`` / ``ISOLATE_ROOT``)::

    layers/<diff_id hex>/root     an unpacked layer in overlayfs format (an overlay lowerdir)
    layers/<diff_id hex>/meta.json  its digests and size
    blobs/sha256/<hex>            image configs (JSON), by digest
    images.json                   image records: id (config digest), names, layers, config
    tmp/                          imports in progress (same filesystem, so rename is atomic)
    locks/                        a lock file per layer and one for images.json

A layer is unpacked into ``tmp/``, verified against its digests, then renamed into
``layers/``: a crash or a bad archive never leaves a half-imported layer where an image
could use it.  Two imports of images sharing a layer serialize on that layer's lock and
the second finds it done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time

from isolate.errors import ConfigError
from isolate.images.unpack import ImageError, LayerInfo, unpack_layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any, BinaryIO

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

    def _lock(self, name: str, shared: bool = False) -> AbstractContextManager[None]:
        from contextlib import contextmanager

        @contextmanager
        def held() -> Iterator[None]:
            locks = os.path.join(self.root, "locks")
            os.makedirs(locks, 0o700, exist_ok=True)
            fd = os.open(os.path.join(locks, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return held()

    def tmp_dir(self) -> str:
        tmp = os.path.join(self.root, "tmp")
        os.makedirs(tmp, 0o700, exist_ok=True)
        path = os.path.join(tmp, os.urandom(8).hex())
        os.mkdir(path, 0o700)
        return path

    # ------------------------------------------------------------------ layers
    def add_layer(
        self,
        open_blob: Callable[[], BinaryIO],
        diff_id: str | None = None,
        digest: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Unpack a layer blob unless the store has it; returns its diff id.

        ``open_blob`` is called only when the layer must be read.  With a known ``diff_id``
        (from the image config) an existing layer is reused without reading anything.
        """
        if diff_id is not None and self.has_layer(diff_id):
            return diff_id
        with self._lock(f"layer-{hex_of(diff_id)}" if diff_id else "layer-unknown"):
            if diff_id is not None and self.has_layer(diff_id):
                return diff_id  # another import finished it while we waited
            work = self.tmp_dir()
            try:
                os.mkdir(os.path.join(work, "root"), 0o755)
                with open_blob() as blob:
                    info = unpack_layer(
                        blob,
                        os.path.join(work, "root"),
                        expected_digest=digest,
                        expected_diff_id=diff_id,
                        progress=progress,
                    )
                return self._commit_layer(work, info)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _commit_layer(self, work: str, info: LayerInfo) -> str:
        target = os.path.dirname(self.layer_dir(info.diff_id))
        meta = {"diff_id": info.diff_id, "digest": info.digest, "size": info.size, "entries": info.entries}
        with open(os.path.join(work, "meta.json"), "w") as f:
            json.dump(meta, f)
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        try:
            os.rename(work, target)
        except OSError:
            if not os.path.isdir(target):  # not "someone else committed the same layer first"
                raise
        return info.diff_id

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
        image_id = self.put_blob(raw)
        names = [parse_ref(n) for n in names]
        with self._lock("images"):
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
        tmp = os.path.join(self.root, "tmp")
        if os.path.isdir(tmp):
            for entry in os.listdir(tmp):  # imports that crashed (a live one holds its layer lock)
                path = os.path.join(tmp, entry)
                if time.time() - os.stat(path).st_mtime > 3600:
                    shutil.rmtree(path, ignore_errors=True)
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
                        # Move it out of layers/ first: a half-deleted layer must never be used.
                        doomed = os.path.join(self.tmp_dir(), "root")
                        os.rename(os.path.join(layers_dir, entry), doomed)
                        shutil.rmtree(os.path.dirname(doomed), ignore_errors=True)
                    finally:
                        os.close(fd)
                    freed.append(diff_id)
        return freed

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


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
