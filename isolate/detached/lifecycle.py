"""Long-lived sandboxes: start detached, list, enter, signal, stop, wait, remove.

State lives in ``<state_dir>/sandboxes/<id>/`` (state.json and log); the monitor
(monitor.py) owns the running sandboxes.  Each function here names its target by id, id
prefix or name, and raises a ConfigError naming the problem when it does not fit: an
unknown name, a name in use, exec into a stopped sandbox, kill of a dead one.
"""

from __future__ import annotations

import _signal as signal
import os
import time

from isolate import _state as state
from isolate.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from isolate.sandbox import Sandbox

SIGNALS = {
    name: getattr(signal, "SIG" + name)
    for name in ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "WINCH", "ALRM", "PIPE")
}


def find(state_dir: str, ref: str) -> dict[str, Any]:
    """A sandbox by name, full id or unique id prefix."""
    if "/" not in ref and ref not in (".", ".."):
        # A full id names its directory: no need to read every record (1000 sandboxes: 60 ms).
        record = state.read_record(state_dir, ref)
        if record is not None and record.get("id") == ref:
            return record
    records = state.all_records(state_dir)
    for record in records:
        if record.get("name") == ref or record["id"] == ref:
            return record
    matches = [r for r in records if str(r["id"]).startswith(ref)] if len(ref) >= 3 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"{ref}: several sandboxes have ids starting so; give more of the id")
    raise ConfigError(f"{ref}: no such sandbox; `isolate ps -a` lists them")


def start_detached(sandbox: Sandbox, argv: list[str], name: str | None = None) -> str:
    """Start ``argv`` in the background; returns the sandbox id.  Output goes to its log."""
    from isolate.detached.monitor import start_detached as hand_over
    from isolate.sandbox import new_id

    if os.geteuid() != 0:
        from isolate.errors import NotRootError

        raise NotRootError("must run as root (sudo isolate ...)")
    config = sandbox.config
    if name is not None and (not name or not all(c.isalnum() or c in "-_." for c in name)):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    sandbox_id = new_id()
    plan = sandbox.plan(argv, sandbox_id)
    state_dir = config.state_dir
    directory = state.record_dir(state_dir, sandbox_id)
    record: dict[str, Any] = {
        "id": sandbox_id,
        "name": name or sandbox_id,
        "status": "created",
        "created": time.time(),
        "command": plan.argv,
        "image": config.image,
        "rootfs": config.rootfs or ("" if config.image else "host"),
        "limits": config.limits.to_dict(),
        "cgroup_version": plan.cgroup_version,
        "cgroup_dirs": plan.cgroup_dirs,
        "env": plan.env,
        "workdir": plan.workdir,
        "user": list(plan.user) if plan.user else None,
        "init": plan.init,
        # what `isolate exec` must apply too: the capabilities kept and the seccomp filter
        **_defences(plan),
        "log": os.path.join(directory, "log"),
        # Who is starting it: a "created" record whose creator is gone was never started.
        "state_dir": state_dir,
        "creator": os.getpid(),
        "creator_start": state.process_start_time(os.getpid()),
    }
    held = -1  # the record directory, locked until the monitor wrote the record (see below)
    if name is None:
        # Nothing to reserve: the monitor writes the first record, once the sandbox runs (a
        # record now would be one more JSON write on every start, about 0.4 ms).  Until then
        # the directory is locked (flock), by this process and by the monitor, which receives
        # the descriptor: `isolate gc` removes a directory with no record only when its lock is
        # free, a start killed before the monitor took it.  Made under the records lock, which
        # gc holds while it looks, so it never sees the directory before it is locked.
        lock = state.records_lock(state_dir)
        try:
            os.makedirs(directory, 0o700)
            held = state.lock_directory(directory)
        finally:
            os.close(lock)
    else:
        lock = state.records_lock(state_dir)
        try:
            if any(r.get("name") == name for r in state.all_records(state_dir)):
                raise ConfigError(f"--name {name}: a sandbox has that name already; `isolate rm {name}` frees it")
            state.write_record(state_dir, record)
        finally:
            os.close(lock)
    fds: list[int] = []
    try:
        fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        fds.append(os.open(str(record["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        hand_over(state_dir, plan, record, (fds[0], fds[1], fds[1], *([held] if held >= 0 else [])))
    except BaseException:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        for fd in fds + ([held] if held >= 0 else []):
            os.close(fd)
    return sandbox_id


def parse_signal(text: str) -> int:
    name = text.upper().removeprefix("SIG")
    if name.isdigit() and 0 < int(name) < 65:
        return int(name)
    if name in SIGNALS:
        return int(SIGNALS[name])
    raise ConfigError(f"{text!r}: not a signal; use a name like TERM or KILL, or a number")


def _pidfd(record: dict[str, Any], what: str) -> int:
    status = state.status_of(record)
    if status != "running":
        raise ConfigError(f"{record['name']}: cannot {what}: the sandbox is {status}")
    pid = int(record["pid"])
    fd = os.pidfd_open(pid)
    if state.process_start_time(pid) != record.get("pid_start"):  # the pid was reused meanwhile
        os.close(fd)
        raise ConfigError(f"{record['name']}: cannot {what}: the sandbox is dead")
    return fd


def kill(state_dir: str, ref: str, sig: int = signal.SIGKILL) -> None:
    """Send a signal to the sandbox's PID 1 (its init, or the command itself)."""
    _kill(find(state_dir, ref), sig)


def _kill(record: dict[str, Any], sig: int) -> None:
    fd = _pidfd(record, "send it a signal")
    try:
        signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def wait(state_dir: str, ref: str, timeout: float | None = None) -> dict[str, Any]:
    """Block until the sandbox stopped and the monitor recorded how; returns its record."""
    return _wait(state_dir, find(state_dir, ref), timeout)


def _wait(state_dir: str, record: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    import select

    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = -1
    if record.get("pid") and state.is_alive(record):
        try:
            pidfd = os.pidfd_open(int(record["pid"]))
        except ProcessLookupError:
            pass
    try:
        if pidfd >= 0:
            # The process's end first (a pidfd is readable once it exited), then the
            # monitor's record of it, which follows within moments.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            select.select([pidfd], [], [], left)
        pause = 0.0005
        while True:
            record = state.read_record(state_dir, str(record["id"])) or record
            status = state.status_of(record)
            if status == "dead":
                # Dead: the process is gone and so is the monitor, now.  It may have recorded
                # the exit and gone idle since the read above (a slow host, a client that
                # stalled): what it wrote last is final, so read again before believing it.
                record = state.read_record(state_dir, str(record["id"])) or record
                status = state.status_of(record)
            if status in ("stopped", "dead"):
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise ConfigError(f"{record['name']}: still running after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def stop(state_dir: str, ref: str, timeout: float = 10.0) -> dict[str, Any]:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, as docker stop does."""
    record = find(state_dir, ref)
    fd = _pidfd(record, "stop it")
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        import select

        if not select.select([fd], [], [], timeout)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)
    return wait(state_dir, ref, timeout=30)


def remove(state_dir: str, ref: str, force: bool = False) -> str:
    """Delete a stopped (or, with force, running) sandbox's record and log."""
    import shutil

    record = find(state_dir, ref)
    status = state.status_of(record)
    if status == "running":
        if not force:
            raise ConfigError(f"{record['name']}: is running; stop it first, or use rm -f")
        _kill(record, signal.SIGKILL)
        _wait(state_dir, record, timeout=30)
    if status == "dead":
        from isolate.detached.gc import collect_sandbox

        collect_sandbox(state_dir, record)
    shutil.rmtree(state.record_dir(state_dir, str(record["id"])), ignore_errors=True)
    return str(record["id"])


def logs(state_dir: str, ref: str) -> str:
    return str(find(state_dir, ref)["log"])


def _defences(plan: Any) -> dict[str, Any]:
    from isolate.plan.seccomp import LoadSeccomp
    from isolate.plan.security import DropCapabilities
    from isolate.plan.steps import NoNewPrivs

    found: dict[str, Any] = {"caps": None, "cap_last": None, "seccomp": None, "no_new_privs": False}
    for step in plan.steps:
        if isinstance(step, DropCapabilities):
            found["caps"], found["cap_last"] = list(step.keep), step.last
        elif isinstance(step, LoadSeccomp):
            found["seccomp"] = step.program.hex()
        elif isinstance(step, NoNewPrivs):
            found["no_new_privs"] = True
    return found
