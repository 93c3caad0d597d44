"""Exact files and values each backend writes, on a fake cgroupfs in tmp_path.

The kernel's behaviour is tested in test_cgroups.py; here only the translation of limits
into files (the table in isolate/limits.py) and the layout detection are pinned down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from isolate import HostSupportError
from isolate.cgroups import layout
from isolate.cgroups.v1 import V1Backend
from isolate.cgroups.v2 import V2Backend
from isolate.limits import Limits

V2_FILES = ["cgroup.procs", "memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "cpuset.cpus", "pids.max",
            "io.weight", "cgroup.subtree_control", "cgroup.controllers"]  # fmt: skip


def fake_v2(root: Path, delegated: str = "cpu memory pids cpuset io") -> Path:
    (root / "cgroup.controllers").write_text(delegated + "\n")
    (root / "cgroup.subtree_control").write_text(delegated + "\n")
    for d in (root / "isolate", root / "isolate" / "box"):
        d.mkdir(parents=True)
        for name in V2_FILES:
            (d / name).write_text("")
    return root


def test_v2_writes(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    limits = Limits(memory="64M", memory_swap="96M", cpus=0.5, cpu_weight=200, cpuset="0", pids=32, io_weight=50)
    group, writes = V2Backend(str(tmp_path)).create("box", "isolate", limits)
    box = tmp_path / "isolate" / "box"
    expected = {"memory.max": "67108864", "memory.swap.max": str(32 << 20), "cpu.max": "50000 100000",
                "cpu.weight": "200", "cpuset.cpus": "0", "pids.max": "32", "io.weight": "default 50"}  # fmt: skip
    assert {name: (box / name).read_text() for name in expected} == expected
    assert dict(writes) == {str(box / name): value for name, value in expected.items()}
    # controllers handed down to the sandboxes below isolate/
    assert (tmp_path / "isolate" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    assert group.join_files() == [str(box / "cgroup.procs")]


def test_v2_memory_without_swap_means_no_swap(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    V2Backend(str(tmp_path)).create("box", "isolate", Limits(memory="64M"))
    assert (tmp_path / "isolate" / "box" / "memory.swap.max").read_text() == "0"


def test_v2_undelegated_controller_is_named_with_the_fix(tmp_path: Path) -> None:
    fake_v2(tmp_path, delegated="cpu pids")
    with pytest.raises(HostSupportError) as info:
        V2Backend(str(tmp_path)).create("box", "isolate", Limits(memory="64M"))
    assert str(info.value) == (
        f"cgroup controller memory is not delegated to {tmp_path}/isolate: "
        f"enable it with: echo '+memory' > {tmp_path}/cgroup.subtree_control"
    )


def fake_v1(root: Path) -> dict[str, str]:
    files = {
        "memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
        "cpu": ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"],
        "cpuacct": [],
        "cpuset": ["cpuset.cpus", "cpuset.mems"],
        "pids": ["pids.max"],
        "freezer": ["freezer.state"],
    }
    mounts = {}
    for controller, names in files.items():
        mount = root / controller
        for d in (mount, mount / "isolate", mount / "isolate" / "box"):
            d.mkdir(parents=True, exist_ok=True)
            for name in names + ["cgroup.procs"]:
                (d / name).write_text("")
        mounts[controller] = str(mount)
    (root / "cpuset" / "isolate" / "cpuset.mems").write_text("0\n")
    return mounts


def test_v1_writes(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    limits = Limits(memory="64M", memory_swap="96M", cpus=0.5, cpu_weight=100, cpuset="0", pids=32)
    group, writes = V1Backend(mounts).create("box", "isolate", limits)

    def content(controller: str, name: str) -> str:
        return (tmp_path / controller / "isolate" / "box" / name).read_text()

    assert content("memory", "memory.limit_in_bytes") == "67108864"
    assert content("memory", "memory.memsw.limit_in_bytes") == str(96 << 20)
    assert content("cpu", "cpu.cfs_period_us") == "100000"
    assert content("cpu", "cpu.cfs_quota_us") == "50000"
    assert content("cpu", "cpu.shares") == "2597"  # weight 100 -> shares, as runc converts
    assert content("cpuset", "cpuset.mems") == "0" and content("cpuset", "cpuset.cpus") == "0"
    assert content("pids", "pids.max") == "32"
    assert [Path(f).name for f, _ in writes][:2] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert len(group.join_files()) == 5  # one cgroup.procs per hierarchy: memory cpuacct pids cpu cpuset


def test_v1_unlimited_pids_reads_as_none(tmp_path: Path) -> None:
    mounts = fake_v1(tmp_path)
    group, _ = V1Backend(mounts).create("box", "isolate", Limits())
    (tmp_path / "pids" / "isolate" / "box" / "pids.max").write_text("max\n")
    assert group.ctl["pids"].max is None


MOUNTINFO = {
    "hybrid": [
        "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
    ],
    "v1": ["30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"],
    "v2": ["30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate"],
    "none": ["27 1 254:0 / / rw - ext4 /dev/vda rw"],
}


@pytest.mark.parametrize("kind", list(MOUNTINFO))
def test_layout_detection(kind: str, tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("\n".join(MOUNTINFO[kind]) + "\n")
    lay = layout(str(info))
    assert lay.kind == kind
    if kind == "hybrid":
        assert lay.v1_mounts == {"memory": "/sys/fs/cgroup/memory", "cpu": "/sys/fs/cgroup/cpu,cpuacct",
                                 "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"}  # fmt: skip
        assert lay.v2_mount == "/sys/fs/cgroup/unified"


@pytest.mark.parametrize("text,size", [("64M", 64 << 20), ("1.5G", 3 << 29), ("512KiB", 512 << 10), ("100", 100)])
def test_sizes(text: str, size: int) -> None:
    assert Limits(memory=text).memory == size
