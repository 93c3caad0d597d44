"""Small OCI image layouts made in tests, without any tool: for corruption and many-layer cases."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def layer_tar(files: dict[str, str | None]) -> bytes:
    """A layer tarball: path -> content (None: an OCI whiteout .wh.NAME for path)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content = files[path]
            if content is None:
                parent, _, name = path.rpartition("/")
                info = tarfile.TarInfo(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
                tar.addfile(info)
            else:
                data = content.encode()
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(
    layout: Path, layers: list[dict[str, str | None]], config: dict[str, object] | None = None,
    ref: str = "localhost/made:latest", gzip_layers: bool = False,
) -> dict[str, object]:  # fmt: skip
    """Write an OCI image layout directory; returns its manifest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors, diff_ids = [], []
    for files in layers:
        raw = layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob = gzip.compress(raw) if gzip_layers else raw
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        descriptors.append({"mediaType": media, **_blob(layout, blob)})
    document = {"architecture": "amd64", "os": "linux", "config": config or {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    import os

    machine = os.uname().machine
    document["architecture"] = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    cfg = _blob(layout, json.dumps(document).encode())
    config_descriptor = {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor, "layers": descriptors}  # fmt: skip
    man = _blob(layout, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
             "annotations": {"org.opencontainers.image.ref.name": ref}}]}  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    return manifest
