"""Pure functions: parsing, path resolution, the plan.  No kernel state involved."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from isolate import ConfigError, Limits, RunResult, Sandbox, Volume
from isolate.cli.options import fast_parse
from isolate.cli.run import parse_duration
from isolate.plan.builder import Template, next_plan
from isolate.plan.steps import Mount, Plan, resolve_in_root
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


def test_plan_is_data_that_explains_itself(busybox_root: Path) -> None:
    plan = Sandbox(busybox_root, hostname="h", volumes=[f"{busybox_root}:/v:ro"]).plan(["true"], "abc")
    assert pickle.loads(pickle.dumps(plan)).steps == plan.steps
    text = "\n".join(plan.shell())
    for expected in (
        "unshare --pid --fork --mount --uts --ipc --net",
        "mount --make-rprivate /",
        "mount -t overlay",
        f"lowerdir={busybox_root}",
        "mount -t proc -o nosuid,nodev,noexec proc",
        "mount -t sysfs -o ro,nosuid,nodev,noexec sysfs",
        "mknod -m 666",
        "ip link set lo up",
        "hostname h",
        "pivot_root . .",
        f"mount --bind {busybox_root}",
        "remount,bind,ro",
        "exec true",
    ):
        assert expected in text, expected
    assert any(isinstance(s, Mount) and s.fstype == "overlay" for s in plan.steps)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hostname": "h"},
        {"share": ["uts"]},
        {"share": ["net", "pid"]},
        {"limits": Limits(memory="32M", pids=8, cpus=0.5)},
        {"cgroups": False},
        {"rootfs": None, "tmpfs": ["/scratch"], "read_only": True},
    ],
)
def test_a_plan_made_from_a_template_is_the_plan_build_plan_makes(busybox_root: Path, options: dict) -> None:
    # A spare's plan is made from the last one's (Sandbox._next_plan): it must be exactly
    # what build_plan makes for its own id, and the template must stay as it was.
    box = Sandbox(**{"rootfs": busybox_root, **options})
    template = Template(box.plan(["true"], "0123456789ab"), "", 0.0)
    kept = pickle.dumps(template.plan)
    made = next_plan(template, box.config, "ba9876543210")
    expected = box.plan(["true"], "ba9876543210")
    for name in Plan.__slots__:
        if name != "template":
            assert getattr(made, name) == getattr(expected, name), name
    assert made.template is template and pickle.dumps(template.plan) == kept
    # The child makes its plan from the template and the identity it is sent.
    copy = pickle.loads(kept).with_identity(pickle.loads(pickle.dumps(made.identity())))
    assert copy.steps == expected.steps and copy.env == expected.env


def test_a_plan_with_directories_of_its_own_is_not_made_from_a_template(busybox_root: Path) -> None:
    for options in ({"keep": True}, {"userns": True}):
        plan = Sandbox(busybox_root, **options).plan(["true"], "0123456789ab")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="its run's own"):
            plan.with_identity(plan.identity())


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
