"""RunResult: what happened to one sandboxed command, for programs and for people."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs milliseconds to import
if TYPE_CHECKING:
    from typing import Any

# The status words, from best to worst.  "isolate-error" means the command never ran
# (or could not be exec'd); its exit_code is then 125, 126 or 127.
STATUSES = ("ok", "nonzero-exit", "signaled", "timed-out", "isolate-error")


class RunResult:
    """The outcome of :meth:`isolate.Sandbox.run`.

    ``exit_code`` follows the shell: the command's exit status, ``128 + N`` when signal N
    ended it, 125/126/127 when isolate could not run it.  Times are in seconds.
    Resource accounting fields stay ``None`` where the run had no cgroup to read them from.
    """

    _FIELDS = (
        "status",
        "exit_code",
        "signal",
        "wall_time",
        "user_time",
        "system_time",
        "sandbox_id",
        "error",
        "upper_dir",
    )

    def __init__(
        self,
        status: str,
        exit_code: int,
        signal: int | None = None,
        wall_time: float = 0.0,
        user_time: float = 0.0,
        system_time: float = 0.0,
        sandbox_id: str = "",
        error: str | None = None,
        upper_dir: str | None = None,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.exit_code = exit_code
        self.signal = signal
        self.wall_time = wall_time
        self.user_time = user_time
        self.system_time = system_time
        self.sandbox_id = sandbox_id
        self.error = error
        self.upper_dir = upper_dir
        self.stdout = stdout
        self.stderr = stderr
        self.extra = extra if extra is not None else {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS if getattr(self, n) is not None)
        return f"RunResult({fields})"

    @property
    def cpu_time(self) -> float:
        return self.user_time + self.system_time

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: bytes fields are decoded (UTF-8, replacement on error)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self._FIELDS}
        for name in ("stdout", "stderr"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value.decode("utf-8", "replace")
        data["cpu_time"] = round(self.cpu_time, 6)
        for name in ("wall_time", "user_time", "system_time"):
            data[name] = round(data[name], 6)
        data.update(self.extra)
        return data

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True)


def status_from_wait(wait_status: int, timed_out: bool) -> tuple[str, int, int | None]:
    """(status, shell exit code, signal) from a waitpid status word."""
    import os

    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return ("timed-out" if timed_out else "signaled"), 128 + sig, sig
    code = os.WEXITSTATUS(wait_status)
    if timed_out:
        return "timed-out", code, None
    return ("ok" if code == 0 else "nonzero-exit"), code, None
