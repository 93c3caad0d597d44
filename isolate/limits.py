"""Resource limits: what the user asks for, validated, with the cgroup files that enforce it.

The same ``Limits`` drive both cgroup backends; ``CGROUP_FILES`` is the map from each limit
to its v1 and v2 files and how the value is translated (also printed by ``--explain``).
"""

from __future__ import annotations

import os

from isolate.errors import ConfigError

_SIZE_SUFFIXES = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}  # fmt: skip
_SIZE_MAX = 1 << 63  # the cgroup files hold signed 64-bit byte counts
# The highest CPU number accepted: the kernel's NR_CPUS is at most 8192; a list like 0-99999999999
# must not become a set of a hundred billion numbers.
_CPU_MAX = 1 << 16
_PIDS_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT: pids.max refuses more
_SECONDS_MAX = 1e9  # about 31 years: a longer time limit would overflow the timers that enforce it

# limit -> (v1 file and value, v2 file and value): the translation table of the two APIs.
CGROUP_FILES = {
    "memory": ("memory.limit_in_bytes = BYTES", "memory.max = BYTES"),
    "memory_swap": (
        "memory.memsw.limit_in_bytes = BYTES (memory + swap)",
        "memory.swap.max = BYTES - memory (swap alone)",
    ),
    "cpus": ("cpu.cfs_period_us = 100000, cpu.cfs_quota_us = CPUS * 100000", "cpu.max = 'CPUS*100000 100000'"),
    "cpu_weight": ("cpu.shares = 2 + (WEIGHT - 1) * 262142 / 9999  (2..262144)", "cpu.weight = WEIGHT  (1..10000)"),
    "cpuset": ("cpuset.cpus = LIST (cpuset.mems copied from the parent first)", "cpuset.cpus = LIST"),
    "pids": ("pids.max = N", "pids.max = N"),
    "io_weight": ("blkio.weight = 10 + (WEIGHT - 1) * 990 / 9999  (10..1000)", "io.weight = 'default WEIGHT'"),
}


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from ``64M``, ``1.5G``, ``512KiB``, ``1048576``: binary units, as docker reads them."""
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip()
        if raw.startswith("-"):
            raise ConfigError(f"{what} {text!r}: must be more than zero")
        end = 0
        while end < len(raw) and (raw[end].isdigit() or raw[end] == "."):
            end += 1
        number, suffix = raw[:end], raw[end:].strip()
        if suffix.lower() not in _SIZE_SUFFIXES:
            raise ConfigError(f"{what} {text!r}: unknown size suffix {suffix!r}; use K, M, G (or KiB, MiB, GiB)")
        try:
            scaled = float(number) * _SIZE_SUFFIXES[suffix.lower()]
        except ValueError:
            raise ConfigError(f"{what} {text!r}: not a size; write e.g. 64M or 1G") from None
        if not scaled < _SIZE_MAX:  # also inf: "9" * 400 parses as a float
            raise ConfigError(f"{what} {text!r}: too large; the most is 8 EiB")
        value = int(scaled)
    if value <= 0:
        raise ConfigError(f"{what} {text!r}: must be more than zero")
    return value


def parse_cpuset(text: str) -> list[int]:
    """CPU numbers from the kernel's list format: ``0``, ``0-2``, ``0,2-3``."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            lo, hi = int(first), int(last or first)
            if lo < 0 or hi < lo or hi >= _CPU_MAX:
                raise ValueError
            cpus.update(range(lo, hi + 1))
    except ValueError:
        raise ConfigError(f"--cpuset {text!r}: expected CPU numbers like 0, 0-2 or 0,2") from None
    return sorted(cpus)


def online_cpus() -> list[int]:
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpuset(f.read().strip())
    except OSError:
        return list(range(os.cpu_count() or 1))


class Limits:
    """Resource limits of one sandbox.  ``None`` means no limit (accounting still happens).

    Args:
        memory: bytes, or a size string ("64M").  OOM-kills the sandbox past it.
        memory_swap: memory plus swap (docker's meaning); equal to ``memory`` means no swap.
        cpus: CPU bandwidth, 0.5 = half of one CPU (a CFS quota).
        cpu_weight: relative share under contention, 1..10000 (v2's unit; default 100).
        cpuset: CPUs the sandbox may run on ("0", "0-1").
        pids: the most processes and threads at once (stops fork bombs).
        io_weight: relative block I/O share, 1..10000.
        time: CPU seconds of the whole sandbox; past it every process is killed (status timed-out).
        wall_time: real seconds; past it every process is killed.
    """

    __slots__ = ("memory", "memory_swap", "cpus", "cpu_weight", "cpuset", "pids", "io_weight", "time", "wall_time")

    def __init__(
        self,
        memory: int | str | None = None,
        memory_swap: int | str | None = None,
        cpus: float | str | None = None,
        cpu_weight: int | str | None = None,
        cpuset: str | None = None,
        pids: int | str | None = None,
        io_weight: int | str | None = None,
        time: float | None = None,
        wall_time: float | None = None,
    ) -> None:
        self.memory = None if memory is None else parse_size(memory, "--memory")
        self.memory_swap = None if memory_swap is None else parse_size(memory_swap, "--memory-swap")
        self.cpus = None if cpus is None else _number(cpus, "--cpus", float)
        self.cpu_weight = None if cpu_weight is None else int(_number(cpu_weight, "--cpu-weight", int))
        self.cpuset = cpuset
        self.pids = None if pids is None else int(_number(pids, "--pids", int, _PIDS_MAX))
        self.io_weight = None if io_weight is None else int(_number(io_weight, "--io-weight", int))
        self.time = None if time is None else _number(time, "--time", float, _SECONDS_MAX)
        self.wall_time = None if wall_time is None else _number(wall_time, "--wall-time", float, _SECONDS_MAX)
        self._validate()

    def _validate(self) -> None:
        if self.memory_swap is not None:
            if self.memory is None:
                raise ConfigError("--memory-swap needs --memory: it is the total of memory and swap")
            if self.memory_swap < self.memory:
                raise ConfigError("--memory-swap must be at least --memory (it counts memory plus swap)")
        ncpu = len(online_cpus())
        if self.cpus is not None and not 0.01 <= self.cpus <= ncpu:
            raise ConfigError(f"--cpus {self.cpus:g}: choose from 0.01 to {ncpu} (the CPUs of this host)")
        if self.cpu_weight is not None and not 1 <= self.cpu_weight <= 10000:
            raise ConfigError(f"--cpu-weight {self.cpu_weight}: choose from 1 to 10000 (default 100)")
        if self.io_weight is not None and not 1 <= self.io_weight <= 10000:
            raise ConfigError(f"--io-weight {self.io_weight}: choose from 1 to 10000 (default 100)")
        if self.cpuset is not None:
            wanted, online = parse_cpuset(self.cpuset), online_cpus()
            outside = [c for c in wanted if c not in online]
            if outside:
                raise ConfigError(
                    f"--cpuset {self.cpuset}: CPU {','.join(map(str, outside))} is not online "
                    f"(this host has {_format_cpus(online)})"
                )
            self.cpuset = _format_cpus(wanted)

    @property
    def any_cgroup_limit(self) -> bool:
        return any(getattr(self, n) is not None for n in self.__slots__ if n not in ("time", "wall_time"))

    def to_dict(self) -> dict[str, object]:
        return {n: getattr(self, n) for n in self.__slots__ if getattr(self, n) is not None}

    def __repr__(self) -> str:
        return "Limits(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


def _number(value: float | int | str, what: str, kind: type, most: float = float("inf")) -> float:
    try:
        number = float(kind(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r}: not a number") from None
    except OverflowError:  # an int of hundreds of digits
        number = float("inf")
    if not number > 0:  # also NaN
        raise ConfigError(f"{what} {value!r}: must be more than zero")
    if not number <= most or number == float("inf"):
        raise ConfigError(f"{what} {value!r}: too large" + (f"; the most is {most:.0f}" if most < float("inf") else ""))
    return number


def _format_cpus(cpus: list[int]) -> str:
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)
