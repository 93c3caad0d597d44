"""Runtime state on the host: one lock file per live sandbox, held by its supervisor.

The supervisor holds an flock(2) on ``<state_dir>/locks/<id>`` from before the sandbox's
cgroup exists until after it is removed.  The kernel drops the lock when the holder dies,
however it dies, so a lock that can be taken belongs to a sandbox whose supervisor is gone:
that is how ``isolate gc`` tells leftovers from sandboxes that are starting or running.
"""

from __future__ import annotations

import errno
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def lock_path(state_dir: str, sandbox_id: str) -> str:
    return os.path.join(state_dir, "locks", sandbox_id)


def hold(state_dir: str, sandbox_id: str) -> int:
    """Create and lock this sandbox's lock file; returns the descriptor that holds it."""
    path = lock_path(state_dir, sandbox_id)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    # The file appears already locked: made under another name, locked, then linked into
    # place.  Created and locked in two steps at its own name, it would be a free lock for a
    # moment, which a concurrent ``isolate gc`` would take for a dead supervisor's.
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)  # a dead supervisor's file, by the same name: lock it as it is, below
    except BaseException:
        os.close(fd)
        raise
    else:
        return fd
    finally:
        os.unlink(tmp)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # ``isolate gc`` may have taken the file between our open and our flock, and unlinked
        # it as a leftover: a lock on an unlinked file protects nothing, so start again.
        if _still_linked(path, fd):
            return fd
        os.close(fd)


def _still_linked(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def release(state_dir: str, sandbox_id: str, fd: int) -> None:
    try:
        os.unlink(lock_path(state_dir, sandbox_id))
    except FileNotFoundError:
        pass
    os.close(fd)


def is_held(state_dir: str, sandbox_id: str) -> bool:
    """True while a live supervisor owns the sandbox (its lock file is locked)."""
    try:
        fd = os.open(lock_path(state_dir, sandbox_id), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def take_abandoned(state_dir: str, sandbox_id: str) -> int | None:
    """The lock of a sandbox of *this* state directory whose supervisor is gone, now held by
    the caller (``isolate gc``) so that nobody can start using it meanwhile; None if the
    sandbox is not ours (no lock file here) or is alive (its supervisor holds the lock).

    A lock file exists from before a sandbox's cgroup is made until after it is removed
    (see :func:`hold`), so a cgroup named for an id without a lock file here belongs to
    another state directory (another user of isolate on this host) and is not ours to touch.
    """
    path = lock_path(state_dir, sandbox_id)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _still_linked(path, fd):  # its supervisor released it just now: gone cleanly
        os.close(fd)
        return None
    return fd


def hold_shared(paths: list[str]) -> list[int]:
    """Shared locks on image layers in use: ``isolate image rm`` and ``prune`` skip those layers."""
    fds: list[int] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        close_all(fds)
        raise
    return fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


# ---------------------------------------------------------------------- sandbox records
# <state_dir>/sandboxes/<id>/state.json, written atomically (rename) under the records lock;
# <state_dir>/sandboxes/<id>/log holds a detached sandbox's output.


def sandboxes_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "sandboxes")


def record_dir(state_dir: str, sandbox_id: str) -> str:
    return os.path.join(sandboxes_dir(state_dir), sandbox_id)


def write_record(state_dir: str, record: dict[str, Any]) -> None:
    import json

    directory = record_dir(state_dir, str(record["id"]))
    os.makedirs(directory, 0o700, exist_ok=True)
    tmp = os.path.join(directory, f".state.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f, sort_keys=True)
    os.rename(tmp, os.path.join(directory, "state.json"))


def read_record(state_dir: str, sandbox_id: str) -> dict[str, Any] | None:
    import json

    try:
        with open(os.path.join(record_dir(state_dir, sandbox_id), "state.json")) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


def all_records(state_dir: str) -> list[dict[str, Any]]:
    top = sandboxes_dir(state_dir)
    records = []
    if os.path.isdir(top):
        for entry in sorted(os.listdir(top)):
            record = read_record(state_dir, entry)
            if record is not None:
                records.append(record)
    return sorted(records, key=lambda r: float(r.get("created", 0)))


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, it names one process for its whole life."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_alive(record: dict[str, Any]) -> bool:
    """The recorded process still runs (a zombie does not: its parent died and nobody reaped it yet)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0 or process_start_time(pid) != record.get("pid_start"):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def lock_directory(path: str) -> int:
    """An exclusive flock on a directory; the descriptor that holds it (see start_detached)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def directory_in_use(path: str) -> bool:
    """Whether a process holds :func:`lock_directory`'s lock on ``path`` (False when it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def records_lock(state_dir: str) -> int:
    """An exclusive lock over names: two `run -d --name web` at once cannot both get it."""
    os.makedirs(state_dir, 0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "records.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def status_of(record: dict[str, Any]) -> str:
    """running, stopped, created, or dead: its process is gone without a recorded exit (a
    crash of the monitor), or the isolate process that was starting it died first."""
    status = str(record.get("status", "created"))
    if status == "running" and not is_alive(record):
        # Exited: the monitor records how within moments, unless the monitor itself is gone.
        # The one that started it: another monitor, started since, knows nothing of it.
        monitor = record.get("monitor")
        if isinstance(monitor, int):
            return "exiting" if is_alive({"pid": monitor, "pid_start": record.get("monitor_start")}) else "dead"
        return "exiting" if monitor_alive(str(record.get("state_dir", ""))) else "dead"
    if status == "created":
        creator = record.get("creator")
        if isinstance(creator, int) and process_start_time(creator) != record.get("creator_start"):
            return "dead"
    return status


def monitor_alive(state_dir: str) -> bool:
    """The monitor holds monitor.lock while it runs (see monitor.serve)."""
    import fcntl

    if not state_dir:
        return False
    try:
        fd = os.open(os.path.join(state_dir, "monitor.lock"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
