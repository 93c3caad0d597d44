"""The podman test-image helper (tests/podman_images.py) makes what the image tests expect."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.commands import require
from support.host import mountinfo
from support.podman_images import (
    CMD_OUTPUT,
    HELLO,
    BuiltImages,
    build_test_images,
    cleanup,
    load_and_run,
    podman,
    store_cgroups,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, busybox_root: Path) -> Iterator[tuple[BuiltImages, Path]]:
    require("podman")
    store = tmp_path_factory.mktemp("podman-store")
    out = tmp_path_factory.mktemp("podman-out")
    try:
        yield build_test_images(store, busybox_root, out), store
    finally:
        cleanup(store)


def read_json(tar: tarfile.TarFile, name: str) -> Any:
    f = tar.extractfile(name)
    assert f is not None, name
    return json.load(f)


def layer_entries(data: bytes) -> list[str]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        return [m.name.removeprefix("./") for m in layer.getmembers()]


def oci_archive_layers(path: Path) -> list[tuple[str, list[str]]]:
    """(digest, entry names) of each layer of the only image in an OCI archive, base first."""
    with tarfile.open(path) as tar:
        index = read_json(tar, "index.json")
        manifest = read_json(tar, "blobs/sha256/" + index["manifests"][0]["digest"].split(":", 1)[1])
        layers = []
        for layer in manifest["layers"]:
            blob = tar.extractfile("blobs/sha256/" + layer["digest"].split(":", 1)[1])
            assert blob is not None
            layers.append((layer["digest"], layer_entries(blob.read())))
        return layers


def test_archives_hold_layers_with_whiteouts(built: tuple[BuiltImages, Path]) -> None:
    images, _ = built
    for key in ("oci_archive", "docker_archive", "sibling_oci_archive"):
        assert images[key].is_file(), key
    layers = oci_archive_layers(images["oci_archive"])
    assert len(layers) == images["layers"] >= 3
    names = [entries for _, entries in layers]
    assert any("etc/hello" in entries and "opt/d/one" in entries for entries in names)
    # a later layer deletes /data/a (a file whiteout) and makes /opt/d opaque
    deleting = [entries for entries in names if "data/.wh.a" in entries]
    opaque = [entries for entries in names if "opt/d/.wh..wh..opq" in entries]
    assert deleting and opaque and deleting[0] is not opaque[0]
    assert any(os.path.basename(n).startswith(".wh.") and not n.endswith(".wh..wh..opq") for n in deleting[0])
    if images["opaque"] == "overlay":  # made by the storage driver: no single whiteouts next to it
        assert not any(n.startswith("opt/d/.wh.") and not n.endswith(".opq") for n in opaque[0])

    with tarfile.open(images["docker_archive"]) as tar:
        (manifest,) = read_json(tar, "manifest.json")
    assert manifest["RepoTags"] == [images["ref"]] and len(manifest["Layers"]) == images["layers"]

    oci_dir = images["oci_dir"]
    assert json.loads((oci_dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    digest = json.loads((oci_dir / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((oci_dir / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())
    assert [layer["digest"] for layer in manifest["layers"]] == [d for d, _ in layers]

    # the sibling shares the base layer, and only that
    sibling = oci_archive_layers(images["sibling_oci_archive"])
    assert len(sibling) == 2 and sibling[0][0] == layers[0][0] and sibling[1][0] not in dict(layers)


def test_load_and_run(built: tuple[BuiltImages, Path]) -> None:
    images, store = built
    proc = load_and_run(store, images["oci_archive"], ["cat", "/etc/hello"])
    assert (proc.returncode, proc.stdout.decode()) == (0, HELLO), proc.stderr
    proc = load_and_run(store, images["docker_archive"], [])  # the image's CMD, ENV and WORKDIR
    assert (proc.returncode, proc.stdout.decode()) == (0, CMD_OUTPUT), proc.stderr
    proc = load_and_run(store, images["oci_dir"], ["sh", "-c", "ls /data /opt/d; ulimit -n"])
    assert (proc.returncode, proc.stdout.decode().split()) == (0, ["/data:", "keep", "/opt/d:", "three", "20000"])


def store_processes(store: Path) -> list[int]:
    """Live processes whose command line names the store (podman, conmon, runc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(store).encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def mount_count() -> int:
    return len(mountinfo())


def test_cleanup_stops_containers_and_leaves_nothing(built: tuple[BuiltImages, Path], tmp_path: Path) -> None:
    images, _ = built
    store = tmp_path / "store"
    mounts = mount_count()
    load_and_run(store, images["sibling_oci_archive"], ["true"])
    started = podman(store, "run", "-d", "--network=none", "--pull=never", images["sibling_ref"], "sleep", "600")
    cid = started.stdout.decode().strip()
    assert podman(store, "inspect", "--format", "{{.State.Running}}", cid).stdout == b"true\n"
    assert store_processes(store) and store_cgroups(store)  # conmon, and the container's cgroups

    cleanup(store)
    assert not store.exists()
    deadline = time.monotonic() + 5
    while store_processes(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store_processes(store) == []
    assert store_cgroups(store) == []
    assert mount_count() == mounts
    cleanup(store)  # twice is fine
