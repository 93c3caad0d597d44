"""``isolate gc``: remove what a crashed or killed supervisor left behind.

Only isolate's own state is touched: cgroups below isolate's parent whose sandbox lock is
free (see state.py), and lock files whose supervisor is gone.  Mounts need no collection:
a sandbox's mounts live in its own mount namespace and vanish with its last process.
"""

from __future__ import annotations

import os

from isolate import _state as state
from isolate import cgroups
from isolate.cgroups.base import DEFAULT_PARENT


def collect_sandbox(state_dir: str, record: dict[str, object]) -> list[str]:
    """Remove what a dead sandbox left: processes in its cgroup, the cgroup, its record."""
    import shutil

    removed = []
    dirs = record.get("cgroup_dirs") or {}
    if isinstance(dirs, dict) and dirs and not state.is_held(state_dir, str(record["id"])):
        present = {k: str(v) for k, v in dirs.items() if os.path.isdir(str(v))}
        if present:
            group = cgroups.open_cgroup(str(record.get("cgroup_version") or "v1"), present)
            group.kill_all()
            group.remove()
            removed += [f"cgroup {d}" for d in sorted(present.values())]
    work = os.path.join(state_dir, str(record["id"]), "work")  # --keep's overlay work dir
    if os.path.isdir(work):
        shutil.rmtree(work, ignore_errors=True)
        removed.append(f"work dir {work}")
    shutil.rmtree(state.record_dir(state_dir, str(record["id"])), ignore_errors=True)
    removed.append(f"sandbox {record['id']} ({record.get('name')}, dead)")
    return removed


def collect(state_dir: str, parent: str = DEFAULT_PARENT) -> list[str]:
    """Remove leftovers; returns a line for each thing removed."""
    from isolate._state import status_of

    removed: list[str] = []
    for record in state.all_records(state_dir):
        if status_of(record) == "dead":
            removed += collect_sandbox(state_dir, record)
    removed += _interrupted_starts(state_dir)
    lay = cgroups.layout()
    by_id: dict[str, dict[str, str]] = {}
    hierarchies = {name: mount for name, mount in lay.v1_mounts.items()}
    if lay.v2_mount:
        hierarchies["unified"] = lay.v2_mount
    for name, mount in hierarchies.items():
        top = os.path.join(mount, parent.strip("/"))
        if not os.path.isdir(top):
            continue
        for entry in os.listdir(top):
            if os.path.isdir(os.path.join(top, entry)) and _looks_like_id(entry):
                by_id.setdefault(entry, {})[name] = os.path.join(top, entry)
    for sandbox_id, dirs in sorted(by_id.items()):
        if state.is_held(state_dir, sandbox_id):
            continue
        version = "v2" if "unified" in dirs else "v1"
        group = cgroups.open_cgroup(version, dirs)
        group.kill_all()
        group.remove()
        removed += [f"cgroup {d}" for d in sorted(dirs.values())]
    from isolate._state import monitor_alive
    from isolate.detached.monitor import socket_path

    if os.path.exists(socket_path(state_dir)) and not monitor_alive(state_dir):
        os.unlink(socket_path(state_dir))  # its monitor was killed; the next `run -d` starts one
        removed.append(f"socket {socket_path(state_dir)} (monitor gone)")
    locks = os.path.join(state_dir, "locks")
    if os.path.isdir(locks):
        for sandbox_id in os.listdir(locks):
            if not state.is_held(state_dir, sandbox_id):
                try:
                    os.unlink(os.path.join(locks, sandbox_id))
                    removed.append(f"lock {os.path.join(locks, sandbox_id)}")
                except FileNotFoundError:
                    pass
    return removed


def _interrupted_starts(state_dir: str, grace: float = 60.0) -> list[str]:
    """Record directories without a record: an unnamed `run -d` killed before the monitor
    wrote it (a start takes milliseconds; these are older than ``grace`` seconds)."""
    import shutil
    import time

    top = state.sandboxes_dir(state_dir)
    removed = []
    for entry in os.listdir(top) if os.path.isdir(top) else []:
        path = os.path.join(top, entry)
        try:
            if os.path.exists(os.path.join(path, "state.json")) or time.time() - os.stat(path).st_mtime < grace:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"sandbox {entry} (start interrupted, no record)")
    return removed


def _looks_like_id(name: str) -> bool:
    return len(name) == 12 and all(c in "0123456789abcdef" for c in name)
