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


def lock_path(state_dir: str, sandbox_id: str) -> str:
    return os.path.join(state_dir, "locks", sandbox_id)


def hold(state_dir: str, sandbox_id: str) -> int:
    """Create and lock this sandbox's lock file; returns the descriptor that holds it."""
    path = lock_path(state_dir, sandbox_id)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


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
