"""Images that real tools made, and hostile or broken ones: import, run, share, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import cli
from support.oci_layouts import make_layout

from isolate import ConfigError, Sandbox
from isolate.images import ImageError, ImageStore, verify_store
from isolate.images.formats import import_path


@pytest.fixture()
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "store"))


def run_image(store: ImageStore, name: str, argv: list[str], **kw: object) -> tuple[int, str]:
    result = Sandbox(image=name, image_root=store.root, **kw).run(argv, capture=True)  # type: ignore[arg-type]
    return result.exit_code, (result.stdout or b"").decode() + (result.stderr or b"").decode()


# ---------------------------------------------------------------- podman-made images
@pytest.fixture(scope="module")
def podman_images(tmp_path_factory: pytest.TempPathFactory, busybox_root: Path) -> Iterator[dict[str, object]]:
    from support.podman_images import build_test_images, cleanup

    pstore = tmp_path_factory.mktemp("podman-store")
    out = tmp_path_factory.mktemp("podman-out")
    try:
        images = build_test_images(pstore, busybox_root, out)
        images["store"] = pstore
        yield images
    finally:
        cleanup(pstore)


@pytest.mark.parametrize("kind", ["oci_archive", "docker_archive", "oci_dir"])
def test_podman_image_runs(kind: str, podman_images: dict[str, object], store: ImageStore) -> None:
    (image,) = import_path(store, str(podman_images[kind]), name="test:1")
    assert len(image.layers) == podman_images["layers"] and image.names == ["test:1"]
    # the image's CMD, ENV and WORKDIR apply when no command is given
    assert run_image(store, "test:1", []) == (0, "hello from /data\n")
    # a file deleted by a later layer is gone; an opaque directory hides what was below it
    code, out = run_image(store, "test:1", ["sh", "-c", "ls /data; ls /opt/d; cat /etc/hello"])
    assert code == 0 and out.split() == ["keep", "three", "hello-from-layer"]
    # each layer (whiteouts, the opaque directory's xattr) is still what its record says
    report = verify_store(store)
    assert report.ok and report.layers == podman_images["layers"] and not report.warnings, report.summary()


def test_images_sharing_a_base_share_its_layer(podman_images: dict[str, object], store: ImageStore) -> None:
    (first,) = import_path(store, str(podman_images["oci_archive"]), name="a")
    (second,) = import_path(store, str(podman_images["sibling_oci_archive"]), name="b")
    assert first.layers[0] == second.layers[0] and first.layers[1:] != second.layers[1:]
    on_disk = os.listdir(os.path.join(store.root, "layers"))
    assert len(on_disk) == len(set(first.layers) | set(second.layers))


def test_export_loads_and_runs_in_podman(podman_images: dict[str, object], store: ImageStore, tmp_path: Path) -> None:
    from support.podman_images import load_and_run

    import_path(store, str(podman_images["docker_archive"]), name="localhost/exported:latest")
    out = tmp_path / "exported.tar"
    assert cli("image", "--root", store.root, "export", "localhost/exported:latest", str(out)).returncode == 0
    proc = load_and_run(Path(str(podman_images["store"])), out, ["sh", "-c", "cat /etc/hello; ls /data; ls /opt/d"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["hello-from-layer", "keep", "three"]
    # and back: the export imports into isolate again, same files
    import_path(store, str(out), name="roundtrip")
    assert run_image(store, "roundtrip", ["sh", "-c", "ls /data; ls /opt/d"])[1].split() == ["keep", "three"]


# ---------------------------------------------------------------- images made here
def test_twenty_layers_and_whiteouts(store: ImageStore, busybox_root: Path, tmp_path: Path) -> None:
    layers: list[dict[str, str | None]] = [{f"layer/{i}": f"{i}\n", "layer/top": f"{i}\n"} for i in range(19)]
    layers[5]["layer/gone"] = "x\n"
    layers[12]["layer/gone"] = None  # an OCI whiteout in a later layer
    make_layout(tmp_path / "oci", layers, {"Cmd": ["cat", "/layer/top"], "Env": ["A=1"]}, ref="localhost/many:1")
    (many,) = import_path(store, str(tmp_path / "oci"))
    assert many.names == ["localhost/many:1"] and len(many.layers) == 19
    # busybox as one more layer on top: 20 lower layers in the overlay
    tools = [str(busybox_root)]
    assert run_image(store, "localhost/many:1", [], layers=tools) == (0, "18\n")
    code, out = run_image(
        store, "localhost/many:1", ["sh", "-c", "ls /layer | wc -l; echo $A; ls /layer/gone"], layers=tools
    )
    assert code != 0 and out.split()[:2] == ["20", "1"] and "No such file" in out


def test_rootfs_tarball_gzip(store: ImageStore, busybox_root: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(busybox_root), "."], check=True)
    proc = cli("image", "--root", store.root, "import", str(tarball), "--name", "gz")
    assert proc.returncode == 0, proc.stderr
    assert run_image(store, "gz", ["sh", "-c", "echo $$"]) == (0, "1\n")
    assert run_image(store, "gz", []) == (0, "")  # default CMD /bin/sh with no input exits 0


def test_build_busybox_and_cli_lifecycle(store: ImageStore) -> None:
    root = ["image", "--root", store.root]
    assert cli(*root, "build-busybox", "bb").returncode == 0
    ls = cli(*root, "ls").stdout.decode()
    assert "bb:latest" in ls
    inspect = json.loads(cli(*root, "inspect", "bb").stdout)
    assert inspect["names"] == ["bb:latest"] and os.path.isdir(inspect["layer_dirs"][0])
    run = cli("run", "--root", store.root, "--image", "bb", "--", "sh", "-c", "echo $$")
    assert (run.returncode, run.stdout) == (0, b"1\n")
    assert cli(*root, "rm", "bb").returncode == 0
    assert os.listdir(os.path.join(store.root, "layers")) == []
    missing = cli("run", "--root", store.root, "--image", "bb", "--", "true")
    assert missing.returncode == 125 and missing.stderr.startswith(b"isolate: bb: no such image")


def test_image_user_workdir_and_overrides(store: ImageStore, busybox_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(busybox_root, root, symlinks=True)
    with open(root / "etc" / "passwd", "a") as f:
        f.write("app:x:1001:1002:app:/home/app:/bin/sh\n")
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(root), "."], check=True)
    (base,) = import_path(store, str(tarball), name="base")
    config = {"config": {"Cmd": ["sh", "-c", "id -u; id -g; pwd"], "User": "app", "WorkingDir": "/srv"}}
    store.add_image(config, base.layers, ["app"], source="test")
    assert run_image(store, "app", []) == (0, "1001\n1002\n/srv\n")
    # a command, --workdir and --user given by the user win over the image's
    assert run_image(store, "app", ["sh", "-c", "id -u; pwd"], workdir="/tmp", user="0") == (0, "0\n/tmp\n")


def test_concurrent_imports_share_layers_safely(store: ImageStore, tmp_path: Path) -> None:
    shared = {"shared/file": "s\n"}
    for i in range(4):
        make_layout(tmp_path / f"oci{i}", [shared, {f"own/{i}": "x\n"}], ref=f"localhost/c:{i}")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            import_path(ImageStore(store.root), str(tmp_path / f"oci{i}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 5  # one shared, four own
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_digest_mismatch_leaves_no_layer(store: ImageStore, tmp_path: Path) -> None:
    manifest = make_layout(tmp_path / "oci", [{"a": "1\n"}, {"b": "2\n"}])
    blob = tmp_path / "oci" / "blobs" / "sha256" / str(manifest["layers"][1]["digest"]).split(":")[1]  # type: ignore[index]
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF  # inside the file content of the second layer
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="sha256"):
        import_path(store, str(tmp_path / "oci"))
    assert store.images() == []
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 1  # the first, complete and verified


def test_missing_blob_is_named(store: ImageStore, tmp_path: Path) -> None:
    manifest = make_layout(tmp_path / "oci", [{"a": "1\n"}])
    digest = str(manifest["layers"][0]["digest"])  # type: ignore[index]
    (tmp_path / "oci" / "blobs" / "sha256" / digest.split(":")[1]).unlink()
    with pytest.raises(ImageError, match=f"blob {digest} is missing"):
        import_path(store, str(tmp_path / "oci"))


def test_not_an_image(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(ImageError, match="isolate image from-dir"):
        import_path(store, str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="exclude each other"):
        Sandbox(tmp_path / "plain", image="x")
    proc = cli("image", "--root", store.root, "import", str(tmp_path / "nope.tar"))
    assert proc.returncode == 125 and proc.stderr.decode().startswith("isolate: ")
    assert proc.stderr.count(b"\n") == 1


def test_prune(store: ImageStore, tmp_path: Path) -> None:
    make_layout(tmp_path / "oci", [{"a": "1\n"}], ref="localhost/p:1")
    import_path(store, str(tmp_path / "oci"))
    import_path(store, str(tmp_path / "oci"), name="other")  # same image, second name
    store.remove("localhost/p:1")
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 1  # still named "other"
    store.remove("other:latest")
    assert os.listdir(os.path.join(store.root, "layers")) == []
    assert store.prune() == []


def test_layers_in_use_survive_rm(store: ImageStore, busybox_root: Path) -> None:
    import_path(store, _tar(busybox_root), name="busy")
    layer = store.layer_dir(store.get("busy").layers[0])
    started = threading.Event()

    def run() -> None:
        box = Sandbox(image="busy", image_root=store.root)
        started.set()
        box.run(["sh", "-c", "sleep 0.5; ls /bin/busybox"], capture=True)

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    import time

    time.sleep(0.25)  # the sandbox is running on the layer
    assert store.remove("busy") == []  # the name goes, the layer stays while in use
    assert os.path.isdir(layer)
    worker.join()
    assert store.prune() == [f"layer sha256:{os.path.basename(os.path.dirname(layer))}"]
    assert not os.path.exists(layer)


def _tar(root: Path) -> str:
    out = Path(str(root) + ".tar")
    if not out.exists():
        subprocess.run(["tar", "-cf", str(out), "-C", str(root), "."], check=True)
    return str(out)


def test_progress_bar_on_a_terminal_only(store: ImageStore, busybox_root: Path) -> None:
    import pty

    from support.commands import ISOLATE_BIN

    tarball = _tar(busybox_root)
    quiet = cli("image", "--root", store.root, "import", tarball, "--name", "q")
    assert quiet.returncode == 0 and quiet.stderr == b""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([ISOLATE_BIN, "image", "--root", store.root, "import", tarball, "--name", "t"],
                              stdout=subprocess.PIPE, stderr=secondary, timeout=60)  # fmt: skip
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"rootfs" in shown and b"100%" in shown


def test_malformed_manifest_is_one_clear_error(store: ImageStore, tmp_path: Path) -> None:
    make_layout(tmp_path / "oci", [{"a": "1\n"}])
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    del index["manifests"][0]["digest"]
    (tmp_path / "oci" / "index.json").write_text(json.dumps(index))
    proc = cli("image", "--root", store.root, "import", str(tmp_path / "oci"))
    assert proc.returncode == 125 and proc.stderr.count(b"\n") == 1
    assert b"malformed oci-dir (KeyError: 'digest')" in proc.stderr


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", "A" * 64, "0" * 63 + "g", "0" * 65])
def test_a_digest_that_is_not_sha256_hex_is_refused(store: ImageStore, tmp_path: Path, bad: str) -> None:
    # Digests become paths in the layout and the store (blobs/sha256/HEX): anything but 64
    # lowercase hex digits is refused before it is used as one.
    make_layout(tmp_path / "oci", [{"a": "1\n"}])
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    index["manifests"][0]["digest"] = f"sha256:{bad}"
    (tmp_path / "oci" / "index.json").write_text(json.dumps(index))
    proc = cli("image", "--root", store.root, "import", str(tmp_path / "oci"))
    assert proc.returncode == 125 and proc.stderr.count(b"\n") == 1
    assert b"not a sha256 digest; the image is malformed" in proc.stderr
    assert store.images() == []
