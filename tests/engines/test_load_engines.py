"""Load through the engines (issue 17): create/start/delete cycles of isolate-oci driven by podman
(with conmon) and by containerd (with the runc v2 shim), each engine a private one started here.
Every cycle's output and exit status are checked, and nothing may be left: no container, runtime
state, shim or conmon, cgroup, or mount.

``ISOLATE_LOAD_ENGINE_CYCLES`` cycles per engine (CI: 20; scripts/reliability: the issue's 500,
in chunks).  Figures go to ``ISOLATE_RELIABILITY_LOG`` (support/chaos.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from support.chaos import Host, processes_matching, record_figures, wait_until
from support.commands import require
from support.containerd_engine import (
    build_image,
    daemon_cgroups,
    import_image,
    read_argv_log,
    remove_all,
    shims,
    start,
    stop,
)
from support.host import pids_in_cgroups
from support.podman_images import add_runtime, cleanup, import_rootfs, podman, runtime_root, store_cgroups

ISOLATE_OCI = os.path.join(os.path.dirname(sys.executable), "isolate-oci")
IMAGE = "localhost/isolate-load:latest"
OPERATIONS = ("create", "start", "delete", "kill", "state")


def cycles() -> int:
    return int(os.environ.get("ISOLATE_LOAD_ENGINE_CYCLES", 20))


def leaf_cgroups(tops: list[str]) -> list[str]:
    return sorted(os.path.join(dirpath, d) for top in tops for dirpath, dirs, _ in os.walk(top) for d in dirs)


def container_cgroups(store: Path) -> list[str]:
    """Cgroups below the store's parent but podman's own conmon group (kept, as with runc), and
    any group with a process in it."""
    tops = store_cgroups(store)
    return [c for c in leaf_cgroups(tops) if os.path.basename(c) != "conmon" or pids_in_cgroups([c])]


def test_podman_create_start_delete_cycles(tmp_path: Path, busybox_root: Path) -> None:
    require("podman")
    require("conmon")
    n = cycles()
    store = tmp_path / "podman"
    host = Host(tmp_path / "unused-state")
    wrong: list[str] = []
    try:
        log = add_runtime(store, "isolate", ISOLATE_OCI)
        rootfs = tmp_path / "image-root"
        shutil.copytree(busybox_root, rootfs, symlinks=True)
        import_rootfs(store, rootfs, IMAGE)
        started = time.monotonic()
        for k in range(n):
            # podman run --rm: the runtime's create, start and delete, with conmon between them
            done = podman(store, "run", "--rm", "--pull=never", "--name", f"load{k}", IMAGE, "sh", "-c",
                          f"echo {k}; exit {k % 5}", runtime="isolate", check=False, timeout=120)  # fmt: skip
            if (done.returncode, done.stdout) != (k % 5, f"{k}\n".encode()):
                wrong.append(f"cycle {k}: exit {done.returncode}, {done.stdout!r}, {done.stderr[-500:]!r}")
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")  # the wrapper quotes each argument: 'create'
        calls = Counter({op: text.count(f"'{op}'") for op in OPERATIONS})
        left_containers = podman(store, "ps", "-a", "--format", "{{.Names}}", runtime="isolate").stdout.split()
        root = runtime_root(store, "isolate")
        left = [f"container {c!r}" for c in left_containers]
        # seccomp/: isolate-oci's cache of compiled filters, kept on purpose
        left += [f"runtime state {root}/{e}" for e in sorted(os.listdir(root)) if e != "seccomp"]
        wait_until(lambda: not container_cgroups(store), timeout=10)
        left += [f"cgroup {c}" for c in container_cgroups(store)]
        left += [f"conmon {p}" for p in processes_matching(str(store)) if "conmon" in _comm(p)]
        left += host.leaks()
    finally:
        cleanup(store)
    record_figures("engines:podman-cycles", cycles=n, wrong=len(wrong), leaks=len(left), seconds=round(seconds, 1),
                   runtime_calls=dict(calls))  # fmt: skip
    assert wrong == [], wrong[:5]
    assert left == [], left
    assert calls["create"] >= n and calls["start"] >= n and calls["delete"] >= n, calls


def test_containerd_create_start_delete_cycles(tmp_path: Path, busybox_root: Path) -> None:
    require("containerd")
    require("ctr")
    n = cycles()
    base = tmp_path / "containerd"
    host = Host(tmp_path / "unused-state")
    wrong: list[str] = []
    daemon = start(base, argv_log=tmp_path / "argv.log")
    try:
        import_image(daemon, build_image(busybox_root, tmp_path / "image.tar"))
        started = time.monotonic()
        for k in range(n):
            cid = f"load{k}"
            done = daemon.ctr(*daemon.run_args(ISOLATE_OCI, cid, "sh", "-c", f"echo {k}; exit {k % 5}"), check=False)
            if (done.returncode, done.stdout) != (k % 5, f"{k}\n".encode()):
                wrong.append(f"cycle {k}: exit {done.returncode}, {done.stdout!r}, {done.stderr[-500:]!r}")
        seconds = time.monotonic() - started
        calls = Counter(next((a for a in entry["argv"] if a in OPERATIONS), "?")
                        for entry in read_argv_log(tmp_path / "argv.log"))  # fmt: skip
        left = [f"container {c}" for c in daemon.containers()]
        wait_until(lambda: not shims(daemon.socket) and not leaf_cgroups(daemon_cgroups(base)), timeout=10)
        left += [f"shim {p}" for p in shims(daemon.socket)]
        left += [f"cgroup {c}" for c in leaf_cgroups(daemon_cgroups(base))]
        root = daemon.runtime_root
        left += [f"runtime state {d}/{e}" for d, _, files in os.walk(root) for e in files]
        left += host.leaks()
    finally:
        remove_all(daemon)
        stop(daemon)
    record_figures("engines:containerd-cycles", cycles=n, wrong=len(wrong), leaks=len(left), seconds=round(seconds, 1),
                   runtime_calls=dict(calls))  # fmt: skip
    assert wrong == [], wrong[:5]
    assert left == [], left
    assert calls["create"] >= n and calls["start"] >= n and calls["delete"] >= n, calls


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
