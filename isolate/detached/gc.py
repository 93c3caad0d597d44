"""``isolate gc``: remove what a crashed or killed supervisor left behind.

Only what is provably dead and provably this state directory's is touched: a cgroup below
isolate's parent is removed only when its sandbox's lock file is in *this* state directory and
gc can take the lock (its supervisor is gone; see _state.take_abandoned).  Another state
directory's sandboxes (another user of isolate on the host, a test suite with a private state
directory) have no lock file here and are never touched, running or not: their own gc removes
them.  Mounts need no collection: a sandbox's mounts live in its own mount namespace and vanish
with its last process.
"""

from __future__ import annotations

import os

from isolate import _state as state
from isolate import cgroups
from isolate.cgroups.base import DEFAULT_PARENT


def collect_sandbox(state_dir: str, record: dict[str, object]) -> list[str]:
    """Remove what a dead sandbox left: processes in its cgroup, the cgroup, its record."""
    import shutil

    sandbox_id = str(record["id"])
    removed = []
    lock = state.take_abandoned(state_dir, sandbox_id)
    try:
        dirs = record.get("cgroup_dirs") or {}
        if isinstance(dirs, dict) and dirs and (lock is not None or not state.is_held(state_dir, sandbox_id)):
            removed += _remove_cgroup(str(record.get("cgroup_version") or "v1"), {k: str(v) for k, v in dirs.items()})
        work = os.path.join(state_dir, sandbox_id, "work")  # --keep's overlay work dir
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)
            removed.append(f"work dir {work}")
        shutil.rmtree(state.record_dir(state_dir, sandbox_id), ignore_errors=True)
        removed.append(f"sandbox {sandbox_id} ({record.get('name')}, dead)")
    finally:
        if lock is not None:
            state.release(state_dir, sandbox_id, lock)
    return removed


def collect(state_dir: str, parent: str = DEFAULT_PARENT) -> list[str]:
    """Remove this state directory's leftovers; returns a line for each thing removed."""
    from isolate._state import status_of

    removed: list[str] = []
    for record in state.all_records(state_dir):
        if status_of(record) == "dead":
            removed += collect_sandbox(state_dir, record)
    removed += _interrupted_starts(state_dir)
    for sandbox_id, dirs in sorted(_cgroups_by_id(parent).items()):
        lock = state.take_abandoned(state_dir, sandbox_id)
        if lock is None:
            continue  # alive, or another state directory's: not ours to judge
        try:
            removed += _remove_cgroup("v2" if "unified" in dirs else "v1", dirs)
        finally:
            state.release(state_dir, sandbox_id, lock)
            removed.append(f"lock {state.lock_path(state_dir, sandbox_id)}")
    from isolate._state import monitor_alive
    from isolate.detached.monitor import socket_path

    if os.path.exists(socket_path(state_dir)) and not monitor_alive(state_dir):
        os.unlink(socket_path(state_dir))  # its monitor was killed; the next `run -d` starts one
        removed.append(f"socket {socket_path(state_dir)} (monitor gone)")
    locks = os.path.join(state_dir, "locks")
    for sandbox_id in sorted(os.listdir(locks)) if os.path.isdir(locks) else []:
        lock = state.take_abandoned(state_dir, sandbox_id)
        if lock is not None:  # its supervisor died before making a cgroup, or after removing it
            state.release(state_dir, sandbox_id, lock)
            removed.append(f"lock {state.lock_path(state_dir, sandbox_id)}")
    return removed


def _cgroups_by_id(parent: str) -> dict[str, dict[str, str]]:
    """Sandbox-id-named cgroups below ``parent``, on every hierarchy: {id: {hierarchy: path}}."""
    lay = cgroups.layout()
    hierarchies = dict(lay.v1_mounts)
    if lay.v2_mount:
        hierarchies["unified"] = lay.v2_mount
    by_id: dict[str, dict[str, str]] = {}
    for name, mount in hierarchies.items():
        top = os.path.join(mount, parent.strip("/"))
        for entry in os.listdir(top) if os.path.isdir(top) else []:
            if _looks_like_id(entry) and os.path.isdir(os.path.join(top, entry)):
                by_id.setdefault(entry, {})[name] = os.path.join(top, entry)
    return by_id


def _remove_cgroup(version: str, dirs: dict[str, str]) -> list[str]:
    present = {k: v for k, v in dirs.items() if os.path.isdir(v)}
    if not present:
        return []
    group = cgroups.open_cgroup(version, present)
    group.kill_all()
    group.remove()
    return [f"cgroup {d}" for d in sorted(present.values())]


def _interrupted_starts(state_dir: str) -> list[str]:
    """Record directories without a record: an unnamed `run -d` killed before the monitor
    wrote it.  A start in progress holds the directory's lock (lifecycle.start_detached), and
    makes it under the records lock, held here, so a directory is never seen before its lock."""
    import shutil

    top = state.sandboxes_dir(state_dir)
    if not os.path.isdir(top):
        return []
    removed = []
    lock = state.records_lock(state_dir)
    try:
        for entry in sorted(os.listdir(top)):
            path = os.path.join(top, entry)
            if os.path.exists(os.path.join(path, "state.json")) or state.directory_in_use(path):
                continue
            if os.path.exists(os.path.join(path, "state.json")):  # written as its lock was let go
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"sandbox {entry} (start interrupted, no record)")
    finally:
        os.close(lock)
    return removed


def _looks_like_id(name: str) -> bool:
    return len(name) == 12 and all(c in "0123456789abcdef" for c in name)
