"""From the store back to an OCI archive that podman and skopeo load (``isolate image export``).

Layers are re-tarred from their unpacked directories, turning overlayfs whiteouts back
into OCI ones (a 0/0 character device NAME -> ``.wh.NAME``; a directory with
``trusted.overlay.opaque=y`` -> ``.wh..wh..opq`` inside it).  The tarballs are rebuilt, not
the original bytes, so the exported config carries their new diff ids.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tarfile

from isolate.images.store import ImageStore, parse_ref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
_XATTRS_KEPT = ("user.", "security.capability")


def tar_directory(directory: str, out: IO[bytes], overlay: bool = True) -> None:
    """Write ``directory`` as a layer tar (PAX: xattrs, long names); deterministic order.

    With ``overlay``, overlayfs whiteouts become OCI whiteouts.  The tree is read through
    descriptors of its directories, each opened with O_NOFOLLOW in its parent, never by path: a
    directory that a running sandbox (which has the tree as a volume) swaps for a symlink while
    it is read can neither lead the walk out of the tree nor put a host file in the layer
    (CVE-2018-15664).
    """
    top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_tree(tar, top, "", overlay)
    finally:
        os.close(top)


def _add_tree(tar: tarfile.TarFile, dir_fd: int, prefix: str, overlay: bool) -> None:
    """A directory's entries (directories first, then the rest, each sorted; a symlink to a
    directory is a link), then each subdirectory's, depth first: os.walk's order."""
    dirs: list[str] = []
    others: list[str] = []
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        (dirs if stat.S_ISDIR(st.st_mode) else others).append(name)
    dirs.sort()
    for name in dirs + sorted(others):
        _add_entry(tar, dir_fd, name, prefix + name, overlay)
    for name in dirs:
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _add_tree(tar, sub, f"{prefix}{name}/", overlay)
        finally:
            os.close(sub)


def _add_entry(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str, overlay: bool) -> None:
    path = f"/proc/self/fd/{dir_fd}/{name}"  # looked up in that very directory, wherever it is now
    st = os.lstat(path)
    if overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        info = tarfile.TarInfo(os.path.join(os.path.dirname(arcname), ".wh." + name))
        info.mtime = int(st.st_mtime)
        tar.addfile(info)
        return
    info = tar.gettarinfo(path, arcname)
    info.uname = info.gname = ""
    xattrs = _xattrs(path)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in xattrs.items()}
    if info.isreg():
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with open(fd, "rb") as f:
            if os.fstat(fd).st_ino != st.st_ino:
                raise OSError(errno.ESTALE, f"{arcname} was replaced while it was read")
            tar.addfile(info, f)
    else:
        tar.addfile(info)
    if overlay and info.isdir() and _opaque(path):
        marker = tarfile.TarInfo(os.path.join(arcname, ".wh..wh..opq"))
        marker.mtime = int(st.st_mtime)
        tar.addfile(marker)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _xattrs(path: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return found
    for name in names:
        if name.startswith(_XATTRS_KEPT):
            try:
                found[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                pass
    return found


def export_oci(store: ImageStore, name: str, out_path: str) -> str:
    """Write image ``name`` as an OCI archive at ``out_path``; returns the manifest digest."""
    image = store.get(name)
    ref = (
        parse_ref(name)
        if not name.startswith("sha256:") and (image.names and parse_ref(name) in image.names)
        else (image.names[0] if image.names else "")
    )
    with store.work_dir() as work:
        blobs: list[tuple[str, str, int]] = []  # (digest, file, size)
        layer_descriptors: list[dict[str, Any]] = []
        diff_ids = []
        for diff_id in image.layers:
            tarball = os.path.join(work, f"layer-{len(blobs)}.tar")
            with open(tarball, "wb") as f:
                tar_directory(store.layer_dir(diff_id), f)
            digest, size = _digest_file(tarball)
            blobs.append((digest, tarball, size))
            diff_ids.append(digest)
            layer_descriptors.append({"mediaType": LAYER, "digest": digest, "size": size})
        config = dict(image.config)
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        config.pop("history", None)  # it described the original layers; its empty_layer count would lie
        config_digest = _add_json(work, blobs, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": blobs[-1][2]},
            "layers": layer_descriptors,
        }
        manifest_digest = _add_json(work, blobs, manifest)
        descriptor: dict[str, Any] = {"mediaType": MANIFEST, "digest": manifest_digest, "size": blobs[-1][2]}
        if ref:
            descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref}
        index = {"schemaVersion": 2, "manifests": [descriptor]}
        tmp_out = f"{out_path}.tmp-{os.getpid()}"
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            _add_bytes(tar, "index.json", json.dumps(index).encode())
            for digest, path, _size in blobs:
                tar.add(path, f"blobs/sha256/{digest.removeprefix('sha256:')}", recursive=False)
        os.rename(tmp_out, out_path)
        return manifest_digest


def _digest_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _add_json(work: str, blobs: list[tuple[str, str, int]], document: dict[str, Any]) -> str:
    data = json.dumps(document, sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(work, digest.removeprefix("sha256:"))
    with open(path, "wb") as f:
        f.write(data)
    blobs.append((digest, path, len(data)))
    return digest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
