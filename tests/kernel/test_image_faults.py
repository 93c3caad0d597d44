"""The image store under faults, a full disk and tampering: `isolate image verify [--repair]`.

- Each phase of an import (isolate.faults' ``import:*`` points) fails in turn, as an error and as
  a kill -9 of the CLI: an error is one line naming the phase (exit 125) and leaves nothing; a kill
  leaves a temporary directory that `image verify` names and `--repair` removes.
- A full disk: the store and the state directory on a small tmpfs.  An import bigger than the
  space is one clear line (the disk is full, which store, which entry), exit 125, and the store
  still verifies with nothing partial in it; a sandbox whose upper layer lives there (``--keep``
  puts it in the state directory) writes until ENOSPC, sees it itself, and isolate reports the
  command's own status.  ``ISOLATE_FAULT=import:layer=enospc`` is the deterministic form.
  Pulling (issue #19) joins these tests when it lands: the same store, the same checks.
- Tampering: files changed, deleted or added in a layer, a layer or blob half-made, images.json
  garbled; verify names each, never follows a symlink out of the layer, and repair removes what
  cannot be trusted but keeps a layer a running sandbox holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import ISOLATE_BIN
from support.host import state_entries
from support.oci_layouts import make_layout

from isolate import Sandbox
from isolate.faults import POINTS
from isolate.images import ImageStore, verify_store
from isolate.images.formats import import_path

# What each point's error must say (the phase), besides "fault injected at POINT".
PHASES = {
    "import:read": "reading the image's index and manifest",
    "import:layer": "unpacking it into the store",
    "import:commit": "moving it into the store",
}


def isolate(
    *args: str, root: Path, fault: str = "", state_dir: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ISOLATE_ROOT": str(root)}
    env.pop("ISOLATE_FAULT", None)
    if fault:
        env["ISOLATE_FAULT"] = fault
    if state_dir is not None:
        env["ISOLATE_STATE_DIR"] = str(state_dir)
    return subprocess.run([ISOLATE_BIN, *args], env=env, capture_output=True, timeout=120)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr.decode()}"
    assert lines[0].startswith("isolate: "), lines[0]
    return lines[0]


def layout(tmp_path: Path) -> Path:
    """An OCI layout of three small layers (a file deleted and a directory made opaque on the way)."""
    oci = tmp_path / "oci"
    if not oci.exists():
        layers: list[dict[str, str | None]] = [
            {"etc/hello": "hello\n", "data/a": "a\n", "data/b": "b\n"},
            {"data/a": None, "bin/tool": "#!/bin/sh\necho tool\n"},
            {"etc/motd": "motd\n"},
        ]
        make_layout(oci, layers, {"Cmd": ["/bin/sh"]}, ref="localhost/three:1")
    return oci


def store_is_clean(root: Path) -> None:
    """`image verify` passes, and nothing is left in tmp/ nor half-written beside images.json."""
    proc = isolate("image", "verify", root=root)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert not os.listdir(root / "tmp") if (root / "tmp").exists() else True
    leftovers = [p.name for p in root.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


# ---------------------------------------------------------------- each phase, as an error and as a kill
@pytest.mark.parametrize("point", sorted(PHASES))
def test_each_import_phase_failing_is_one_line_naming_it_and_leaves_nothing(point: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(layout(tmp_path), arcname=".")  # any files will do: a root filesystem tarball
    for source in (layout(tmp_path), tarball):
        proc = isolate("image", "import", str(source), "--name", "x", root=root, fault=point)
        assert proc.returncode == 125, (point, source, proc.stderr)
        line = one_line(proc.stderr)
        assert PHASES[point] in line and f"fault injected at {point}" in line, line
        assert "Input/output error" in line and str(source) in line, line
        store_is_clean(root)
        assert not (root / "layers").exists() or os.listdir(root / "layers") == []
        assert isolate("image", "ls", "--json", root=root).stdout.strip() in (b"[]", b"")
    # and without the fault the same imports work, and verify
    assert isolate("image", "import", str(layout(tmp_path)), root=root).returncode == 0
    assert isolate("image", "import", str(tarball), "--name", "x", root=root).returncode == 0
    store_is_clean(root)


def test_every_import_point_is_tested() -> None:
    assert set(PHASES) == {p for p in POINTS if p.startswith("import:")}


@pytest.mark.parametrize("point", sorted(PHASES))
def test_a_kill_at_each_import_phase_leaves_only_what_verify_finds_and_repair_removes(
    point: str, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    proc = isolate("image", "import", str(layout(tmp_path)), root=root, fault=f"{point}=kill")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    verify = isolate("image", "verify", root=root)
    if point == "import:read":  # killed before anything was made
        assert verify.returncode == 0, verify.stdout
    else:  # killed with a layer in tmp/, unpacked or not yet
        assert verify.returncode == 1, verify.stdout
        out = verify.stdout.decode()
        assert re.search(r"^temporary tmp/[0-9a-f]{16}: left by an import or a removal that did not finish$", out, re.M)
        assert "1 problems" in out.splitlines()[-1]
        repair = isolate("image", "verify", "--repair", root=root)
        assert repair.returncode == 0 and b"[removed]" in repair.stdout, repair.stdout
    store_is_clean(root)
    # the store works after the repair: the import is made again, whole
    assert isolate("image", "import", str(layout(tmp_path)), root=root).returncode == 0
    store_is_clean(root)


def test_prune_also_removes_what_killed_imports_left_but_not_a_live_import(tmp_path: Path) -> None:
    """`image prune` removes dead temporaries at once (their lock is free), never a live one."""
    root = tmp_path / "store"
    assert isolate("image", "import", str(layout(tmp_path)), root=root, fault="import:commit=kill").returncode < 0
    store = ImageStore(str(root))
    with store.work_dir() as live:  # an import in progress, as far as anyone else can tell
        dead = [p for p in os.listdir(root / "tmp") if os.path.join(root, "tmp", p) != live]
        assert len(dead) == 1
        assert store.prune() == [f"temporary {root / 'tmp' / dead[0]}"]
        assert os.path.isdir(live)
        report = verify_store(store)
        assert report.ok and not report.problems  # the live one is not a problem either
    store_is_clean(root)


# ---------------------------------------------------------------- a full disk
@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs that this test owns: for the store and the state directory."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "isolate-test-small", str(mount_point)],
                   check=True)  # fmt: skip
    try:
        yield mount_point
    finally:
        deadline = time.monotonic() + 10
        while subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the small tmpfs stays busy"
            time.sleep(0.1)  # e.g. an idle monitor, which exits within a second


def big_rootfs(tmp_path: Path, mib: int) -> Path:
    """A root filesystem tarball holding ``mib`` MiB that do not compress."""
    source = tmp_path / "big-src"
    source.mkdir(exist_ok=True)
    (source / "etc").mkdir(exist_ok=True)
    (source / "etc" / "hello").write_text("hello\n")
    with open(source / "blob", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    out = tmp_path / "big.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(source, arcname=".")
    return out


def test_an_import_bigger_than_the_disk_is_a_clear_error_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    root = small_disk / "store"
    big = big_rootfs(tmp_path, 20)
    proc = isolate("image", "import", str(big), "--name", "big", root=root)
    assert proc.returncode == 125, proc.stderr
    line = one_line(proc.stderr)
    assert f"the disk holding the image store {root} is full" in line, line
    assert "No space left on device, writing entry './blob'" in line and str(big) in line, line
    store_is_clean(root)
    assert not (root / "layers").exists() or os.listdir(root / "layers") == []
    # An image of several layers whose last one does not fit: the layers before it are complete
    # (a later import reuses them), the image is not recorded, nothing is half-made.
    oci = tmp_path / "oci-big"
    make_layout(oci, [{"etc/a": "a\n"}, {"etc/b": "b\n"}, {"big": "x" * (20 << 20)}], ref="localhost/big:1")
    proc = isolate("image", "import", str(oci), root=root)
    assert proc.returncode == 125
    line = one_line(proc.stderr)
    assert "layer 3/3" in line and "is full" in line and "writing entry 'big'" in line, line
    store_is_clean(root)
    report = verify_store(ImageStore(str(root)))
    assert report.images == 0 and len(report.unused_layers) == 2 and report.ok
    # freeing space (here: a smaller image instead) lets the store be used at once
    assert (
        ImageStore(str(root)).prune() and isolate("image", "import", str(layout(tmp_path)), root=root).returncode == 0
    )
    store_is_clean(root)


@pytest.mark.parametrize("point", ["import:layer", "import:commit"])
def test_a_full_disk_injected_at_each_write_phase_is_the_same_clear_error(point: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = isolate("image", "import", str(layout(tmp_path)), root=root, fault=f"{point}=enospc")
    assert proc.returncode == 125
    line = one_line(proc.stderr)
    assert f"the disk holding the image store {root} is full: No space left on device" in line, line
    assert PHASES[point] in line and "--root or ISOLATE_ROOT" in line, line
    store_is_clean(root)


def test_a_sandbox_filling_its_upper_layer_sees_enospc_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    """The upper layer is on the small tmpfs: with --keep it lives in the state directory (without
    --keep it is a tmpfs of the sandbox's own, bounded by its memory limit instead)."""
    root, state_dir = small_disk / "store", small_disk / "state"
    assert isolate("image", "build-busybox", "bb", root=root).returncode == 0
    script = "dd if=/dev/zero of=/fill bs=1M count=64; s=$?; echo dd=$s; exit $s"
    proc = isolate("run", "--keep", "--json", "--image", "bb", "--", "sh", "-c", script, root=root, state_dir=state_dir)
    out = proc.stdout.decode()
    assert "No space left on device" in proc.stderr.decode() and "dd=1" in out, (out, proc.stderr)
    assert proc.returncode == 1  # the command's own status: isolate did not fail, the command did
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "nonzero-exit" and result["exit_code"] == 1 and result["error"] is None
    kept = Path(result["upper_dir"])
    assert kept.is_relative_to(state_dir) and (kept / "fill").stat().st_size > 0
    shutil.rmtree(kept.parent)  # what --keep keeps, on purpose; everything else is gone already
    assert state_entries(str(state_dir)) == set()
    store_is_clean(root)  # the sandbox wrote to its upper layer only


# ---------------------------------------------------------------- what verify finds and repair removes
def test_verify_names_files_changed_deleted_or_added_and_repair_removes_the_layer(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(str(root))
    (image,) = import_path(store, str(layout(tmp_path)), name="three")
    (other,) = import_path(store, str(layout(tmp_path)), name="again")  # the same image: two names
    assert verify_store(store).ok
    first = Path(store.layer_dir(image.layers[0]))
    # Same size, same mtime, new content: only the content digest can tell.
    hello = first / "etc" / "hello"
    st = hello.stat()
    hello.write_text("HELLO\n")
    os.utime(hello, ns=(st.st_atime_ns, st.st_mtime_ns))
    (first / "data" / "b").unlink()
    (first / "etc" / "added").write_text("x\n")
    os.chmod(first / "etc", 0o777)
    # A directory swapped for a symlink out of the layer: reported, never followed (/etc is not read).
    shutil.rmtree(first / "data")
    os.symlink("/etc", first / "data")
    proc = isolate("image", "verify", root=root)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    short = image.layers[0][:19]
    for expected in (
        f"layer {short}: /etc/hello: changed (content)",
        f"layer {short}: /data/b: deleted",
        f"layer {short}: /etc/added: added",
        f"layer {short}: /etc: changed (mode 755 -> 777, mtime)",
        f"layer {short}: /data: changed (was a directory, is a symlink)",
        f"image three:latest again:latest: its layer {short} failed verification",
    ):
        assert expected in out, out
    assert "passwd" not in out  # nothing below the symlink was looked at
    report = json.loads(isolate("image", "verify", "--json", root=root).stdout)
    assert not report["ok"] and {p["kind"] for p in report["problems"]} == {"layer", "image"}
    repair = isolate("image", "verify", "--repair", root=root)
    assert repair.returncode == 0, repair.stdout
    assert not first.exists() and store.images() == []
    assert os.path.isdir("/etc") and os.path.exists("/etc/passwd")  # the symlink's target untouched
    store_is_clean(root)
    # the other layers were sound and stay, unused, for the next import to reuse
    assert len(verify_store(store).unused_layers) == 2
    assert other.layers[1:] == image.layers[1:]


def test_half_made_layers_bad_blobs_and_a_garbled_index_are_found(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(str(root))
    (image,) = import_path(store, str(layout(tmp_path)), name="three")
    layer_dir = Path(store.layer_dir(image.layers[1])).parent
    (layer_dir / "meta.json").unlink()  # half-made: meta.json missing
    blob = root / "blobs" / "sha256" / image.id[7:]
    blob.write_bytes(b"{}")  # the config blob no longer has its digest
    (root / "layers" / "not-a-layer").mkdir()
    out = isolate("image", "verify", root=root).stdout.decode()
    assert f"layer {image.layers[1][:19]}: its meta.json is missing or unreadable" in out, out
    assert f"blob {image.id[:19]}: its content does not match its digest" in out, out
    assert "layer layers/not-a-layer: not a layer" in out, out
    assert f"image three:latest: its layer {image.layers[1][:19]} failed verification" in out, out
    assert isolate("image", "verify", "--repair", root=root).returncode == 0
    assert store.images() == [] and not layer_dir.exists() and not (root / "layers" / "not-a-layer").exists()
    store_is_clean(root)
    # A lost config blob alone is written again from the image's record (its digest is the id).
    (image,) = import_path(store, str(layout(tmp_path)), name="three")
    blob.unlink()
    assert "its config blob is missing" in isolate("image", "verify", root=root).stdout.decode()
    repair = isolate("image", "verify", "--repair", root=root).stdout.decode()
    assert "[restored]" in repair and blob.exists() and store.get("three").id == image.id
    store_is_clean(root)
    # A garbled images.json: no image can be trusted; repair moves it aside
    (root / "images.json").write_text("{not json")
    assert isolate("image", "verify", root=root).returncode == 1
    assert isolate("image", "verify", "--repair", root=root).returncode == 0
    assert (root / "images.json.corrupt").exists() and store.images() == []
    store_is_clean(root)


def test_a_damaged_layer_in_use_is_kept_until_its_sandbox_ends(tmp_path: Path, busybox_root: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(str(root))
    (image,) = import_path(store, _tar(busybox_root), name="bb")
    layer = Path(store.layer_dir(image.layers[0]))
    signals = tmp_path / "signals"
    signals.mkdir()
    script = "touch /s/started; while [ ! -e /s/stop ]; do sleep 0.05; done"
    box = Sandbox(image="bb", image_root=str(root), volumes=[f"{signals}:/s"])
    worker = threading.Thread(target=box.run, args=(["sh", "-c", script],), kwargs={"timeout": 60})
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not (signals / "started").exists():
            assert time.monotonic() < deadline and worker.is_alive(), "the sandbox did not start"
            time.sleep(0.02)
        (layer / "etc" / "group").write_text("tampered\n")
        repair = isolate("image", "verify", "--repair", root=root)
        out = repair.stdout.decode()
        assert repair.returncode == 1, out
        assert (
            "/etc/group: changed" in out and "[kept: a running sandbox uses it; repair again once it has ended]" in out
        )
        assert "image bb:latest: its layer" in out and "[kept: a running sandbox uses its damaged layer" in out
        assert layer.exists() and store.get("bb").id == image.id
    finally:
        (signals / "stop").touch()
        worker.join()
    repair = isolate("image", "verify", "--repair", root=root)
    assert repair.returncode == 0 and "[removed]" in repair.stdout.decode()
    assert not layer.exists() and store.images() == []
    store_is_clean(root)


def _tar(root: Path) -> str:
    out = Path(str(root) + ".tar")
    if not out.exists():
        subprocess.run(["tar", "-cf", str(out), "-C", str(root), "."], check=True)
    return str(out)


def test_sandboxes_running_on_an_image_leave_its_layers_as_recorded(tmp_path: Path, busybox_root: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(str(root))
    import_path(store, _tar(busybox_root), name="bb")
    script = "echo new > /etc/new; rm /etc/group; chmod 700 /bin; echo more >> /etc/passwd; mkdir -p /x/y"
    result = Sandbox(image="bb", image_root=str(root)).run(["sh", "-c", script], capture=True)
    assert result.exit_code == 0, result.stderr
    store_is_clean(root)


def test_a_layer_unpacked_before_records_gets_a_warning_and_a_new_import_records_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(str(root))
    (image,) = import_path(store, str(layout(tmp_path)), name="three")
    # as isolate left layers before it kept records: no files record, no "files" in meta.json
    base = Path(store.layer_dir(image.layers[0])).parent
    (base / "files").unlink()
    meta = json.loads((base / "meta.json").read_text())
    del meta["files"]
    (base / "meta.json").write_text(json.dumps(meta))
    proc = isolate("image", "verify", root=root)
    assert proc.returncode == 0, proc.stdout
    (warning,) = [line for line in proc.stdout.decode().splitlines() if line.startswith("warning:")]
    assert f"layer {image.layers[0][:19]}: no record of its files" in warning and "import an image" in warning
    import_path(store, str(layout(tmp_path)), name="three")  # unpacked again, with its record this time
    assert (base / "files").exists()
    report = verify_store(store)
    assert report.ok and report.warnings == [] and report.files > 0
    store_is_clean(root)


def test_usage_errors_exit_125_and_an_empty_store_verifies(tmp_path: Path) -> None:
    proc = isolate("image", "verify", "--no-such-option", root=tmp_path / "store")
    assert proc.returncode == 125 and b"no such option" in proc.stderr.lower()
    proc = isolate("image", "verify", "--json", root=tmp_path / "nothing-here")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    assert not (tmp_path / "nothing-here").exists()  # verify made nothing
