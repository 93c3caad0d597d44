"""RunResult: what happened to one sandboxed command, for programs and for people."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs milliseconds to import
if TYPE_CHECKING:
    from typing import Any

# The status words, best first, in the words of ioi/isolate's meta files and of contest
# judges.  "isolate-error" means the command never ran (or could not be exec'd); its
# exit_code is then 125, 126 or 127.
SHORT_STATUS = {"ok": "OK", "nonzero-exit": "RE", "signaled": "SG", "oom-killed": "OOM", "timed-out": "TO",
                "isolate-error": "XX"}  # fmt: skip


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
        "cgroup",
        "memory_peak",
        "oom_kills",
        "pids_limit_hits",
        "nr_throttled",
        "throttled_time",
        "limits_hit",
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
        #: cgroup accounting: "v1" or "v2", and None everywhere when the run had no cgroup
        self.cgroup: str | None = None
        self.memory_peak: int | None = None  # bytes, the cgroup's high-water mark
        self.oom_kills: int | None = None  # processes the OOM killer ended in the sandbox
        self.pids_limit_hits: int | None = None  # forks refused at pids.max
        self.nr_throttled: int | None = None  # CFS periods in which the quota ran out
        self.throttled_time: float | None = None  # seconds spent throttled
        #: the limits that stopped or slowed the sandbox: memory, pids, cpus, cpu-time, wall-time
        self.limits_hit: list[str] = []

    @property
    def oom_killed(self) -> bool:
        return bool(self.oom_kills)

    @property
    def short_status(self) -> str:
        """OK, RE, SG, OOM, TO or XX: the status in ioi/isolate's words."""
        return SHORT_STATUS[self.status]

    def add_cgroup_stats(self, version: str, stats: dict[str, Any], limits: Any) -> None:
        """Fold a cgroup's counters in: CPU time of every process, peak memory, limits hit."""
        self.cgroup = version
        if stats.get("cpu_user") is not None and stats.get("cpu_system") is not None:
            # The cgroup counts every process of the sandbox, also those its first process
            # never waited for; wait4's rusage would miss them.
            self.user_time, self.system_time = stats["cpu_user"], stats["cpu_system"]
        self.memory_peak = stats.get("memory_peak")
        self.oom_kills = stats.get("oom_kills")
        self.pids_limit_hits = stats.get("pids_limit_hits")
        self.nr_throttled = stats.get("nr_throttled")
        self.throttled_time = stats.get("throttled_time")
        if self.oom_kills:
            self.limits_hit.append("memory")
            if self.status in ("nonzero-exit", "signaled"):
                self.status = "oom-killed"
        if self.pids_limit_hits:
            self.limits_hit.append("pids")
        if limits is not None and limits.cpus is not None and self.nr_throttled:
            self.limits_hit.append("cpus")

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS if getattr(self, n) not in (None, []))
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
        data["oom_killed"] = self.oom_killed
        data["short_status"] = self.short_status
        data["limits_hit"] = list(self.limits_hit)
        for name in ("wall_time", "user_time", "system_time", "throttled_time"):
            if data[name] is not None:
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


def meta_lines(result: RunResult) -> str:
    """The run in ioi/isolate's meta-file format: ``key:value`` lines that judges already parse."""
    lines = [f"time:{result.cpu_time:.3f}", f"time-wall:{result.wall_time:.3f}"]
    if result.memory_peak is not None:
        lines.append(f"cg-mem:{result.memory_peak // 1024}")
    if result.oom_kills:
        lines.append("cg-oom-killed:1")
    if result.signal is not None:
        lines.append(f"exitsig:{result.signal}")
    elif result.status != "isolate-error":
        lines.append(f"exitcode:{result.exit_code}")
    if result.status in ("timed-out", "oom-killed") or result.signal == 9:
        lines.append("killed:1")
    lines.append(f"status:{result.short_status}")
    message = {
        "timed-out": "Time limit exceeded" + (" (wall clock)" if "wall-time" in result.limits_hit else ""),
        "oom-killed": "Out of memory",
        "signaled": f"Caught fatal signal {result.signal}",
        "nonzero-exit": f"Exited with error status {result.exit_code}",
        "isolate-error": result.error or "isolate error",
    }.get(result.status)
    if message:
        lines.append(f"message:{message}")
    return "\n".join(lines) + "\n"
