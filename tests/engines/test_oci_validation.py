"""The OCI runtime-tools validation suite, run against runc and isolate-oci side by side.

scripts/build-runtime-tools builds the suite offline (cached in /var/cache/isolate/runtime-tools,
or $ISOLATE_RUNTIME_TOOLS); tests/engines/oci-validation runs each of its tests against both runtimes,
each with a private state root, and cleans up whatever a test leaves.  Not every test passes here
for any runtime (this host lacks some cgroup v1 controllers, AppArmor, SELinux and
CAP_SYS_RESOURCE, and the suite has bugs), so runc is the reference: every test runc passes,
isolate-oci must pass too, and leave nothing behind that runc does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.commands import require
from support.host import cgroup_mounts

from isolate.config import DEFAULT_CGROUP_PARENT

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(REPO, "scripts", "build-runtime-tools")
VALIDATION = os.path.join(HERE, "oci-validation")  # the harness lives with the tests that run it
ISOLATE_OCI = os.path.join(os.path.dirname(sys.executable), "isolate-oci")
SUITE = os.environ.get("ISOLATE_RUNTIME_TOOLS", "/var/cache/isolate/runtime-tools")
RUNC_PASSES_AT_LEAST = 20  # it passes about 32 here: far fewer means the harness is broken
# Leaks oci-validation reports (and cleans up) that are the runtime's doing, not the suite's;
# mounts_gone: mounts of the host the runtime unmounted.
LEAK_KINDS = ("containers", "state_left_after_delete", "processes", "mounts", "mounts_gone", "cgroups")
# The suite's own leftovers, seen with runc as well: linux_ns_path makes its namespaces with
# `unshare --fork sleep 10000` and kills unshare, then its process group, which at times
# misses the sleep (oci-validation kills it).
SUITE_LEAKS = {("linux_ns_path", "processes")}
# Run again with every mount shared, as on a systemd host: the two tests whose configs set
# linux.rootfsPropagation (both "shared": with it isolate-oci's pivot_root once unmounted the
# host's cgroup hierarchies, /dev/pts and /dev/shm, and so left its cgroup), the one that
# joins a mount namespace by path (the root is moved, not pivoted), and those that mount most.
SHARED_MOUNT_TESTS = ("config_updates_without_affect", "linux_rootfs_propagation", "linux_ns_path", "mounts",
                      "linux_masked_paths", "linux_readonly_paths", "root_readonly_true")  # fmt: skip


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def describe(test: str, run: dict[str, Any]) -> str:
    """One failing test: the verdict, the failing TAP lines, stderr and the last runtime calls."""
    out = [f"{test}: {run['verdict']} ({run['why']}), {run['passed']} ok / {run['failed']} not ok"]
    for block in run["failing"][:4]:
        out.append("    " + tail(block, 12).replace("\n", "\n    "))
    if len(run["failing"]) > 4:
        out.append(f"    ... and {len(run['failing']) - 4} more failing results")
    if run["stderr"].strip():
        out.append("    stderr: " + tail(run["stderr"], 4).replace("\n", "\n            "))
    if not run["failing"] and not run["stderr"].strip() and run["tap"].strip():
        out.append("    stdout: " + tail(run["tap"], 6).replace("\n", "\n            "))
    if run["calls"]:
        out.append("    last calls: " + " | ".join(run["calls"][-3:]))
    leaks = {kind: items for kind, items in run["leaks"].items() if kind != "cgroups_elsewhere"}  # others' work
    if leaks:
        out.append(f"    left behind: {leaks}")
    return "\n".join(out)


def below_isolate(cgroup: str) -> bool:
    """Is CGROUP below isolate's parent group?  Only isolate makes groups there."""
    return any(cgroup.startswith(os.path.join(point, DEFAULT_CGROUP_PARENT) + "/") for point in cgroup_mounts())


def validate(tmp_path: Path, *options: str) -> dict[str, Any]:
    """oci-validation's results for runc and isolate-oci, by test."""
    runc = require("runc")
    assert os.access(ISOLATE_OCI, os.X_OK), f"{ISOLATE_OCI} is not installed"

    built = subprocess.run([BUILD, SUITE], capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert built.returncode == 0, f"building the validation suite failed:\n{tail(built.stderr + built.stdout, 30)}"

    report = tmp_path / "validation.json"
    ran = subprocess.run(
        [sys.executable, VALIDATION, "--no-build", "--suite", SUITE, "--timeout", "60", "--json", str(report),
         *options, f"runc={runc}", f"isolate-oci={ISOLATE_OCI}"],
        capture_output=True, text=True, timeout=3000, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ran.returncode == 0, f"oci-validation failed:\n{tail(ran.stderr + ran.stdout, 30)}"
    results: dict[str, Any] = json.loads(report.read_text())["tests"]
    return results


def problems(results: dict[str, Any]) -> list[str]:
    """Each validation test runc passes and isolate-oci does not, and what isolate-oci left."""
    out = []
    runc_passes = [t for t, by in results.items() if by["runc"]["verdict"] == "pass"]
    failed = [t for t in runc_passes if results[t]["isolate-oci"]["verdict"] != "pass"]
    if failed:
        out.append(
            f"isolate-oci fails {len(failed)} of the {len(runc_passes)} validation tests runc passes: "
            + ", ".join(failed)
            + "\n\n"
            + "\n\n".join(describe(t, results[t]["isolate-oci"]) for t in failed)
        )
    # What a test left that oci-validation had to clean up, when runc left nothing of that kind;
    # a cgroup below isolate's parent is isolate-oci's whatever runc did, and so are host mounts gone.
    leaks = []
    for t, by in results.items():
        for kind, items in by["isolate-oci"]["leaks"].items():
            if kind not in LEAK_KINDS or (t, kind) in SUITE_LEAKS:
                continue
            if kind in by["runc"]["leaks"] and kind != "mounts_gone":
                items = [c for c in items if kind == "cgroups" and below_isolate(c)]
            if items:
                leaks.append(f"{t}: {kind}: {items}")
    if leaks:
        out.append("isolate-oci left behind what runc did not:\n" + "\n".join(leaks))
    return out


def test_isolate_oci_passes_every_validation_test_runc_passes(tmp_path: Path) -> None:
    results = validate(tmp_path)
    runc_passes = [t for t, by in results.items() if by["runc"]["verdict"] == "pass"]
    assert len(runc_passes) >= RUNC_PASSES_AT_LEAST, (
        f"runc itself passes only {len(runc_passes)} of {len(results)} tests: the suite or the harness is broken\n"
        + "\n".join(describe(t, by["runc"]) for t, by in results.items() if by["runc"]["verdict"] != "pass")
    )
    found = problems(results)
    assert not found, "\n\n".join(found)


def test_isolate_oci_leaves_nothing_when_the_hosts_mounts_are_shared(tmp_path: Path) -> None:
    results = validate(tmp_path, "--shared-mounts", "--only", ",".join(SHARED_MOUNT_TESTS))
    assert sorted(results) == sorted(SHARED_MOUNT_TESTS)
    assert results["config_updates_without_affect"]["runc"]["verdict"] == "pass", describe(
        "config_updates_without_affect", results["config_updates_without_affect"]["runc"]
    )
    found = problems(results)
    assert not found, "\n\n".join(found)
