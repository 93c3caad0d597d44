"""Reading images as real tools write them, into the store.

- an **OCI image layout**, as a directory or a tar archive (``podman save --format
  oci-archive``, ``skopeo copy ... oci:DIR``, umoci, buildah): ``oci-layout``, ``index.json``,
  ``blobs/sha256/...`` (image-spec: image-layout.md, image-index.md, manifest.md, config.md);
- a **docker archive** (``docker save``, ``podman save``'s default): ``manifest.json`` naming
  each image's config and layer tars;
- a **root filesystem tarball** (plain, gzip, bzip2, xz, zstd): one layer, a default config.

Every manifest and config is checked against its digest, every layer against its digest
and its diff id; layers the store already has are not read at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

from isolate import faults
from isolate.images.store import Image, ImageStore, check_config, hex_of
from isolate.images.unpack import ImageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any, BinaryIO

    Progress = Callable[[str, int], "Callable[[int], None] | None"]

INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def host_arch() -> str:
    machine = os.uname().machine
    return _ARCH.get(machine, machine)


class _Source:
    """Files of an image layout or archive, by relative path."""

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{_short(name)}: larger than {limit >> 20} MiB; not a manifest or config")
        return data

    def close(self) -> None:
        pass


class _Member:
    """A member of the archive being read: a member cut short by the archive's end is an ImageError
    (tarfile's ReadError would escape the layer's reader as a traceback)."""

    def __init__(self, f: IO[bytes], path: str, name: str) -> None:
        self.f, self.path, self.name = f, path, name

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except (tarfile.TarError, EOFError) as exc:
            raise ImageError(f"{self.path}: {_short(self.name)}: {exc}; the image archive is damaged") from None

    def __enter__(self) -> _Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _short(value: object) -> str:
    """A value from an image's own documents, for a message: one line, not too long."""
    text = repr(value) if not isinstance(value, str) or not value.isprintable() else value
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


class _DirSource(_Source):
    def __init__(self, path: str) -> None:
        self.path = path

    def _full(self, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise ImageError(f"{name!r}: a path outside the image layout; refusing this image")
        return os.path.join(self.path, name)

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self._full(name), "rb")
        except FileNotFoundError:
            raise ImageError(f"{self.path}: {_short(name)} is missing; the image layout is incomplete") from None
        except OSError as exc:  # a directory where a blob goes, a symlink loop, no permission
            raise ImageError(
                f"{self.path}: cannot read {_short(name)}: {exc.strerror}; the image layout is damaged"
            ) from None

    def has(self, name: str) -> bool:
        return os.path.isfile(self._full(name))


class _TarSource(_Source):
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:")  # archives are uncompressed: members are seekable
        except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable tar archive ({exc})") from None
        try:  # the headers after the first are read here
            self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers()}
        except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
            self.tar.close()
            raise ImageError(f"{path}: a corrupt tar archive ({exc}); the image archive is damaged") from None

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name) if isinstance(name, str) else None
        f = self.tar.extractfile(member) if member is not None and member.isfile() else None
        if f is None:
            raise ImageError(f"{self.path}: {_short(name)} is missing from the archive; it is incomplete")
        return _Member(f, self.path, name)  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return name in self.members

    def close(self) -> None:
        self.tar.close()


def detect(path: str) -> str:
    """ "oci-dir", "oci-archive", "docker-archive" or "rootfs"."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")) or os.path.isfile(os.path.join(path, "index.json")):
            return "oci-dir"
        raise ImageError(
            f"{path}: a directory but not an OCI image layout (no oci-layout file); "
            f"to make an image of a root filesystem directory use: isolate image from-dir {path} NAME"
        )
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(COMPRESSED_MAGIC):
        return "rootfs"  # image archives are written uncompressed; a compressed tar is a root filesystem
    source = _TarSource(path)
    try:
        if source.has("oci-layout") or source.has("index.json"):
            return "oci-archive"
        if source.has("manifest.json"):
            return "docker-archive"
        return "rootfs"
    finally:
        source.close()


def import_path(store: ImageStore, path: str, name: str | None = None, progress: Progress | None = None) -> list[Image]:
    """Import whatever ``path`` holds; returns the images added (an archive may hold several)."""
    path = os.path.abspath(path)
    try:
        faults.point("import:read")
        kind = detect(path)
        if kind == "rootfs":
            return [import_rootfs_tarball(store, path, name, progress)]
        source: _Source = _DirSource(path) if kind == "oci-dir" else _TarSource(path)
    except OSError as exc:
        raise store.failure(f"{path}: reading the image's index and manifest", exc) from None
    try:
        if kind == "docker-archive":
            return _import_docker(store, source, path, name, progress)
        return _import_oci(store, source, path, name, progress)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # A manifest, index or config missing a field or holding the wrong type.
        raise ImageError(
            f"{path}: malformed {kind} ({type(exc).__name__}: {exc}); not an image isolate can read"
        ) from None
    except OSError as exc:  # the store's own writes are named by the store: this is reading
        raise store.failure(f"{path}: reading the image", exc) from None
    finally:
        source.close()


def _json(source: _Source, name: str, path: str) -> Any:
    return _loads(source.read(name), f"{path}: {_short(name)}")


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # not JSON, not UTF-8, a number of more than 4300 digits
        raise ImageError(f"{what} is not JSON ({exc}); the image is corrupt") from None
    except RecursionError:
        raise ImageError(f"{what}: JSON nested too deeply; the image is corrupt") from None


def _verified(source: _Source, digest: str, what: str) -> bytes:
    data = source.read(f"blobs/sha256/{hex_of(digest)}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"{what} {digest}: digest mismatch; the image is corrupt")
    return data


def _pick_manifest(source: _Source, index: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The manifest for this host's platform, following nested indexes."""
    candidates = index.get("manifests") or []
    if name and len(candidates) > 1:
        named = [d for d in candidates if _ref_of(d) in (name, _tag_of(name))]
        candidates = named or candidates
    arch = host_arch()
    for descriptor in candidates:
        platform = descriptor.get("platform") or {}
        if platform and (platform.get("os") != "linux" or platform.get("architecture") != arch):
            continue
        if descriptor.get("mediaType") in (INDEX, DOCKER_LIST):
            nested = _loads(_verified(source, descriptor["digest"], "index"), f"index {descriptor['digest']}")
            return _pick_manifest(source, nested, None)
        return dict(descriptor)
    raise ImageError(f"no image for linux/{arch} in this index; pull one for this platform")


def _opener(source: _Source, name: str) -> Callable[[], BinaryIO]:
    """Opens one blob of the source when called (the store calls it only for a missing layer)."""
    return lambda: source.open(name)  # type: ignore[return-value]


def _ref_of(descriptor: dict[str, Any]) -> str:
    return str((descriptor.get("annotations") or {}).get("org.opencontainers.image.ref.name", ""))


def _tag_of(name: str) -> str:
    return name.rsplit(":", 1)[-1] if ":" in name.rsplit("/", 1)[-1] else "latest"


def _import_oci(
    store: ImageStore, source: _Source, path: str, name: str | None, progress: Progress | None
) -> list[Image]:
    index = _json(source, "index.json", path)
    descriptor = _pick_manifest(source, index, name)
    manifest = _loads(_verified(source, descriptor["digest"], "manifest"), f"manifest {descriptor['digest']}")
    config_raw = _verified(source, manifest["config"]["digest"], "config")
    config = check_config(_loads(config_raw, f"config {manifest['config']['digest']}"))
    layers = manifest.get("layers") or []
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(layers) != len(diff_ids):
        raise ImageError(f"{path}: the manifest lists {len(layers)} layers, the config {len(diff_ids)}")
    added = []
    for i, (layer, diff_id) in enumerate(zip(layers, diff_ids)):
        if layer.get("mediaType") not in LAYER_TYPES:
            raise ImageError(f"layer {_short(layer.get('digest'))}: unsupported media type {layer.get('mediaType')!r}")
        blob = f"blobs/sha256/{hex_of(layer['digest'])}"
        if not store.has_layer(diff_id) and not source.has(blob):
            raise ImageError(f"{path}: blob {layer['digest']} is missing; the image is incomplete")
        size = layer.get("size")  # for the progress bar only: a wrong one is not worth a refusal
        size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
        callback = progress(f"layer {i + 1}/{len(layers)}", size) if progress else None
        what = f"{path}: layer {i + 1}/{len(layers)} ({layer['digest'][:19]})"
        added.append(store.add_layer(_opener(source, blob), diff_id, layer["digest"], callback, what))
    ref = name or _ref_of(descriptor)
    if ref and ":" not in ref and "/" not in ref and not name:
        ref = ""  # a bare tag ("latest") names nothing
    names = [ref] if ref else []
    return [store.add_image(config, added, names, source=path)]


def _import_docker(
    store: ImageStore, source: _Source, path: str, name: str | None, progress: Progress | None
) -> list[Image]:
    entries = _json(source, "manifest.json", path)
    if name and len(entries) > 1:
        raise ImageError(f"{path}: holds {len(entries)} images; --name can name only one")
    images = []
    for entry in entries:
        config_raw = source.read(entry["Config"])
        config = check_config(_loads(config_raw, f"{path}: {_short(entry['Config'])}"))
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layers = entry.get("Layers") or []
        if len(layers) != len(diff_ids):
            raise ImageError(f"{path}: manifest.json lists {len(layers)} layers, the config {len(diff_ids)}")
        added = []
        for i, (layer, diff_id) in enumerate(zip(layers, diff_ids)):
            if not store.has_layer(diff_id) and not source.has(layer):
                raise ImageError(f"{path}: {_short(layer)} is missing; the archive is incomplete")
            size = source.members[layer].size if isinstance(source, _TarSource) and layer in source.members else 0
            callback = progress(f"layer {i + 1}/{len(layers)}", size) if progress else None
            what = f"{path}: layer {i + 1}/{len(layers)} ({_short(layer)})"
            added.append(store.add_layer(_opener(source, layer), diff_id, None, callback, what))
        names = [name] if name else list(entry.get("RepoTags") or [])
        images.append(store.add_image(config, added, names, source=path))
    return images


def default_config(diff_id: str, created_by: str) -> dict[str, Any]:
    """An image config for a bare root filesystem: sh as the command, the usual PATH."""
    return {
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": created_by}],
    }


def import_rootfs_tarball(
    store: ImageStore, path: str, name: str | None = None, progress: Progress | None = None
) -> Image:
    if not name:
        base = os.path.basename(path)
        for ext in (".gz", ".tgz", ".zst", ".bz2", ".xz", ".tar"):
            base = base.removesuffix(ext)
        name = base or "rootfs"
    callback = progress("rootfs", os.path.getsize(path)) if progress else None
    diff_id = store.add_layer(lambda: open(path, "rb"), None, None, callback, f"{path}: its one layer")
    return store.add_image(default_config(diff_id, f"isolate image import {path}"), [diff_id], [name], source=path)


def import_directory(store: ImageStore, directory: str, name: str) -> Image:
    """An image of one layer holding a root filesystem directory (``isolate image from-dir``)."""
    from isolate.images.export import tar_directory

    if not os.path.isdir(directory):
        raise ImageError(f"{directory}: not a directory; give the root filesystem to make an image of")
    with store.work_dir() as work:
        tarball = os.path.join(work, "layer.tar")
        try:
            with open(tarball, "wb") as f:
                tar_directory(directory, f, overlay=False)
        except OSError as exc:
            raise store.failure(f"{directory}: making a layer of it", exc) from None
        diff_id = store.add_layer(lambda: open(tarball, "rb"), what=f"{directory}: its layer")
    return store.add_image(
        default_config(diff_id, f"isolate image from-dir {directory}"), [diff_id], [name], source=directory
    )


def build_busybox(store: ImageStore, name: str) -> Image:
    """A busybox image from Debian's busybox-static, with no network."""
    from isolate.images.busybox import build_busybox_rootfs

    with store.work_dir() as work:
        root = build_busybox_rootfs(os.path.join(work, "root"))
        return import_directory(store, root, name)
