"""The plan a Sandbox makes, as root makes it on this host: what it holds, and that a plan
made from a template (a spare's) is exactly the one build_plan makes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from isolate import Limits, Sandbox
from isolate.plan.builder import next_plan
from isolate.plan.steps import Mount, Plan, Template


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
