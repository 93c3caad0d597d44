"""Runtime-spec hooks run by the runtime itself: prestart, createRuntime, poststart, poststop.

Each hook gets the container's state JSON on stdin, its own args and env, and is killed
after ``timeout`` seconds.  createContainer hooks run the same way but inside the
container's namespaces (the path is resolved on the host, then the process enters them).
"""

from __future__ import annotations

import os
import subprocess

from isolate.errors import IsolateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class HookError(IsolateError):
    pass


def run(kind: str, hooks: list[dict[str, Any]], state: bytes, enter_pid: int = 0) -> None:
    """Run ``hooks`` in order; the first failure raises HookError naming it."""
    for hook in hooks:
        path = hook.get("path") or ""
        args = [str(a) for a in hook.get("args") or [path]]
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        timeout = hook.get("timeout")
        fds = [os.open(f"/proc/{enter_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
               for ns in ("ipc", "uts", "net", "pid", "mnt")] if enter_pid else []  # fmt: skip

        try:
            done = subprocess.run(
                args, executable=path, input=state, env=env, capture_output=True,
                timeout=timeout if timeout else None, preexec_fn=_enter(fds) if fds else None, close_fds=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise HookError(f"{kind} hook {path} did not finish within {timeout} s (hooks[].timeout)") from None
        except OSError as exc:
            raise HookError(f"{kind} hook {path}: {exc.strerror}") from None
        finally:
            for fd in fds:
                os.close(fd)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-500:]
            raise HookError(f"{kind} hook {path} failed with status {done.returncode}: {err}")


def _enter(fds: list[int]) -> Any:
    def preexec() -> None:
        from isolate import _libc

        for fd in fds:
            _libc.setns(fd, 0)

    return preexec
