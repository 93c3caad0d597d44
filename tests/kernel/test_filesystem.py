"""Layers, writes, volumes, read-only roots, --keep, tmpfs, chroot and its escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isolate import ConfigError, Sandbox
from isolate.config import DEFAULT_STATE_DIR


def run(sandbox: Sandbox, script: str) -> tuple[int, str, str]:
    result = sandbox.run(["/bin/sh", "-c", script], capture=True)
    return result.exit_code, (result.stdout or b"").decode(), (result.stderr or b"").decode()


def test_writes_go_to_the_upper_layer_only(busybox_root: Path) -> None:
    before = set(os.listdir(busybox_root))
    result = Sandbox(busybox_root, keep=True).run(["/bin/sh", "-c", "echo data > /newfile; rm /etc/group"])
    try:
        assert result.exit_code == 0 and result.upper_dir
        upper = Path(result.upper_dir)
        assert (upper / "newfile").read_text() == "data\n"
        assert (upper / "etc" / "group").is_char_device()  # an overlayfs whiteout
        assert set(os.listdir(busybox_root)) == before
        assert (busybox_root / "etc" / "group").exists()
        assert not os.path.exists("/newfile")
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(result.upper_dir or "/nonexistent"), ignore_errors=True)


def test_upper_layer_is_gone_after_the_run(busybox_root: Path) -> None:
    code, out, _ = run(Sandbox(busybox_root), "echo data > /newfile && cat /newfile")
    assert (code, out) == (0, "data\n")
    assert not (busybox_root / "newfile").exists()
    from support.host import PERMANENT

    assert set(os.listdir(DEFAULT_STATE_DIR)) <= set(PERMANENT) and os.listdir(f"{DEFAULT_STATE_DIR}/mnt") == []
    assert os.listdir(f"{DEFAULT_STATE_DIR}/locks") == []
    # and the next run starts clean
    assert run(Sandbox(busybox_root), "ls /newfile")[0] != 0


def test_read_only_root(busybox_root: Path) -> None:
    code, _, err = run(Sandbox(busybox_root, read_only=True), "echo x > /f")
    assert code != 0 and "Read-only file system" in err
    code, out, _ = run(Sandbox(busybox_root, read_only=True), "echo x > /tmp/f && cat /tmp/f")
    assert (code, out) == (0, "x\n")


def test_volume_both_ways(busybox_root: Path, tmp_path: Path) -> None:
    (tmp_path / "from-host").write_text("hello\n")
    code, out, _ = run(
        Sandbox(busybox_root, volumes=[f"{tmp_path}:/data"]), "cat /data/from-host; echo back > /data/from-sandbox"
    )
    assert (code, out) == (0, "hello\n")
    assert (tmp_path / "from-sandbox").read_text() == "back\n"


def test_read_only_volume_is_enforced(busybox_root: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, out, err = run(Sandbox(busybox_root, volumes=[f"{tmp_path}:/data:ro"]), "cat /data/f; echo y > /data/f")
    assert out == "x" and code != 0 and "Read-only file system" in err
    assert (tmp_path / "f").read_text() == "x"


def test_file_volume(busybox_root: Path, tmp_path: Path) -> None:
    (tmp_path / "conf").write_text("v=1\n")
    assert run(Sandbox(busybox_root, volumes=[f"{tmp_path}/conf:/etc/app.conf:ro"]), "cat /etc/app.conf")[1] == "v=1\n"


def test_volume_target_symlink_stays_inside_root(tmp_path: Path) -> None:
    # An image whose /data is a symlink to /etc must get the volume at <root>/etc, never at
    # the host's /etc.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    os.symlink("/bin/busybox", root / "bin" / "sh")
    os.symlink("/bin/busybox", root / "bin" / "cat")
    import shutil

    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    os.symlink("/etc", root / "data")
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("m\n")
    code, out, _ = run(Sandbox(root, volumes=[f"{src}:/data"]), "cat /etc/marker")
    assert (code, out) == (0, "m\n")
    assert not os.path.exists("/etc/marker")


def test_tmpfs_option(busybox_root: Path) -> None:
    code, out, _ = run(Sandbox(busybox_root, tmpfs=["/scratch:size=1m"]), "grep ' /scratch ' /proc/mounts")
    assert code == 0 and "tmpfs" in out and "size=1024k" in out and "noexec" in out


def test_layers_stack_later_on_top(busybox_root: Path, tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "etc").mkdir(parents=True)
    (high / "etc").mkdir(parents=True)
    (low / "etc" / "who").write_text("low\n")
    (low / "etc" / "only-low").write_text("x\n")
    (high / "etc" / "who").write_text("high\n")
    code, out, _ = run(Sandbox(busybox_root, layers=[low, high]), "cat /etc/who /etc/only-low")
    assert (code, out) == (0, "high\nx\n")


def test_layer_needs_rootfs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--layer needs --rootfs"):
        Sandbox(layers=[tmp_path])


def test_workdir_env_and_user(busybox_root: Path) -> None:
    sandbox = Sandbox(busybox_root, workdir="/srv/app", env={"GREETING": "hi"}, user="1000:1001")
    code, out, _ = run(sandbox, 'pwd; echo "$GREETING $PATH"; id -u; id -g')
    assert code == 0
    assert out.splitlines() == [
        "/srv/app",
        "hi /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "1000",
        "1001",
    ]


ESCAPE = """
import os
os.makedirs("/jail", exist_ok=True)
os.chroot("/jail")          # cwd stays outside the new root
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print(os.path.exists(%r))
"""


@pytest.mark.parametrize("mode,escapes", [("chroot", True), ("pivot_root", False)])
def test_chroot_escape(mode: str, escapes: bool, tmp_path: Path) -> None:
    """The classic escape: a root process chroots again and climbs out of its old root."""
    marker = tmp_path / "host-only-marker"
    marker.write_text("")
    sandbox = Sandbox(mode=mode)
    assert sandbox.run(["test", "-e", str(marker)]).exit_code == 1  # not visible by plain means
    result = sandbox.run(["python3", "-c", ESCAPE % str(marker)], capture=True)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (b"True\n" if escapes else b"False\n")
