"""Pure functions: parsing, path resolution, the plan.  No kernel state involved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isolate import ConfigError, RunResult, Volume
from isolate.cli.options import fast_parse
from isolate.cli.run import parse_duration
from isolate.plan.steps import resolve_in_root
from isolate.result import status_from_wait


def test_fast_parse() -> None:
    parsed = fast_parse(
        ["--rootfs", "/r", "-v", "/a:/b", "--volume=/c:/d:ro", "--read-only", "--net", "host", "--", "sh", "-c", "x"]
    )
    assert parsed is not None
    opts, command = parsed
    assert command == ["sh", "-c", "x"]
    assert opts["rootfs"] == "/r" and opts["volume"] == ["/a:/b", "/c:/d:ro"]
    assert opts["read_only"] is True and opts["net"] == "host" and opts["keep"] is False
    assert fast_parse(["echo", "--rootfs"]) == (fast_parse([])[0], ["echo", "--rootfs"])  # type: ignore[index]


@pytest.mark.parametrize(
    "args", [["--help"], ["--frob", "x"], ["--net", "bogus", "x"], ["--rootfs"], ["--keep=yes", "x"]]
)
def test_fast_parse_defers_to_click(args: list[str]) -> None:
    assert fast_parse(args) is None


@pytest.mark.parametrize("text,seconds", [("5", 5.0), ("2.5s", 2.5), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1", "abc", "1x", "nan", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_resolve_in_root_never_leaves_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "etc").mkdir()
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../..", root / "up")
    os.symlink("real", root / "rel")
    r = str(root)
    assert resolve_in_root(r, "/abs/passwd", create="file") == f"{r}/etc/passwd"
    assert resolve_in_root(r, "/up/etc") == f"{r}/etc"
    assert resolve_in_root(r, "/../../x", create="dir") == f"{r}/x"
    assert resolve_in_root(r, "/rel/new/leaf", create="file") == f"{r}/real/new/leaf"
    assert (root / "real" / "new" / "leaf").is_file()
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError, match="too many levels"):
        resolve_in_root(r, "/loop/x")


def test_volume_parse() -> None:
    v = Volume.parse("/a:/b:ro")
    assert (v.source, v.target, v.read_only) == ("/a", "/b", True)
    assert Volume.parse("/a:/b").read_only is False
    for bad in ("/a", "/a:", ":/b", "/a:/b:rx", "/a:/b:ro:x"):
        with pytest.raises(ConfigError):
            Volume.parse(bad)


def test_status_from_wait() -> None:
    assert status_from_wait(0, False) == ("ok", 0, None)
    assert status_from_wait(3 << 8, False) == ("nonzero-exit", 3, None)
    assert status_from_wait(9, False) == ("signaled", 137, 9)
    assert status_from_wait(9, True) == ("timed-out", 137, 9)


def test_run_result_json() -> None:
    r = RunResult("ok", 0, wall_time=0.1234567, user_time=0.5, system_time=0.25, stdout=b"\xffa")
    d = r.to_dict()
    assert d["wall_time"] == 0.123457 and d["cpu_time"] == 0.75 and d["stdout"] == "\ufffda"
    assert "stderr" not in d and r.ok


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, isolate; print(sorted(m for m in ('click', 'psutil', 'cgroupspy', 'typing') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
