"""The checks a demo makes of what its command printed.

A check is called with the command's stdout and stderr and returns None when the system
behaved as the lab says, else one line saying what went wrong.  Each is a frozen record
whose fields are its expectations, so the catalogue that uses them stays plain data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Check = Callable[[str, str], str | None]


@dataclass(frozen=True)
class AnyOutput:
    """No claim: the command is a step of the lab (cleaning up, starting a sandbox)."""

    def __call__(self, out: str, err: str) -> str | None:
        return None


@dataclass(frozen=True, init=False)
class Has:
    """Every word appears in the output (stdout or stderr)."""

    words: tuple[str, ...]

    def __init__(self, *words: str) -> None:
        object.__setattr__(self, "words", words)

    def __call__(self, out: str, err: str) -> str | None:
        missing = [w for w in self.words if w not in out + err]
        return f"expected to see {missing}" if missing else None


@dataclass(frozen=True, init=False)
class Lacks:
    """No word appears in the output (stdout or stderr): something is gone."""

    words: tuple[str, ...]

    def __init__(self, *words: str) -> None:
        object.__setattr__(self, "words", words)

    def __call__(self, out: str, err: str) -> str | None:
        present = [w for w in self.words if w in out + err]
        return f"expected not to see {present}" if present else None


@dataclass(frozen=True)
class FirstLine:
    """The first line of stdout is ``value`` (surrounding blanks aside)."""

    value: str

    def __call__(self, out: str, err: str) -> str | None:
        first = (out.splitlines() or [""])[0].strip()
        return None if first == self.value else f"expected the first line to be {self.value!r}, got {first!r}"


@dataclass(frozen=True)
class HostnameAndOwnIpc:
    """stdout is the hostname, then an ipc namespace link that is not the caller's."""

    hostname: str

    def __call__(self, out: str, err: str) -> str | None:
        words = out.split()
        own = words[:1] == [self.hostname] and words[1:2] != [os.readlink("/proc/self/ns/ipc")]
        return None if own else "same ipc namespace?"


@dataclass(frozen=True)
class UpperLayerKept:
    """--keep kept an upper layer holding a new file, a whiteout and a copied-up file.

    The check removes what was kept: the lab leaves nothing behind.
    """

    new: str  # paths relative to the sandbox's root
    deleted: str
    changed: str

    def __call__(self, out: str, err: str) -> str | None:
        import shutil
        import stat

        line = next((line for line in err.splitlines() if "upper layer kept at " in line), "")
        upper = line.rsplit(" ", 1)[-1] if line else ""
        if not upper or not os.path.isdir(upper):
            return "no upper layer was kept"
        try:
            whiteout = os.lstat(os.path.join(upper, self.deleted))
            found = {
                "new file": os.path.isfile(os.path.join(upper, self.new)),
                f"whiteout for /{self.deleted}": stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0,
                f"copied-up /{self.changed}": os.path.isfile(os.path.join(upper, self.changed)),
            }
        except OSError as exc:
            return f"upper layer incomplete: {exc}"
        finally:
            shutil.rmtree(os.path.dirname(upper), ignore_errors=True)
        missing = [k for k, v in found.items() if not v]
        return f"missing in the upper layer: {missing}" if missing else None


NO_RESULT = "no run result (--json) in the output"


def run_result(out: str) -> dict[str, object] | None:
    """The result record that ``isolate run --json`` prints last, or None."""
    try:
        data = json.loads(out.splitlines()[-1])
    except (IndexError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class StatusIs:
    """The run's result (--json) has this status."""

    status: str

    def __call__(self, out: str, err: str) -> str | None:
        result = run_result(out)
        if result is None:
            return NO_RESULT
        return None if result.get("status") == self.status else f"status {result.get('status')}"


@dataclass(frozen=True)
class CpuThrottled:
    """The run (--json) used between ``low`` and ``high`` CPU seconds and was throttled."""

    low: float
    high: float

    def __call__(self, out: str, err: str) -> str | None:
        result = run_result(out)
        if result is None:
            return NO_RESULT
        cpu, throttled = result.get("cpu_time"), result.get("nr_throttled")
        if isinstance(cpu, (int, float)) and self.low <= cpu <= self.high and throttled:
            return None
        return f"cpu_time {cpu}, throttled {throttled}"


@dataclass(frozen=True)
class PidsLimitHit:
    """The run (--json) hit its pids limit at least once."""

    def __call__(self, out: str, err: str) -> str | None:
        result = run_result(out)
        if result is None:
            return NO_RESULT
        return None if result.get("pids_limit_hits") else "pids.max was never hit"
