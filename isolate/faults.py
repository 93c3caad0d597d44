"""Faults on purpose, for tests: make a named point of isolate's work fail, or die there.

``ISOLATE_FAULT`` names the points, comma-separated, each ``NAME`` or ``NAME=ACTION``:

- ``error`` (the default): raise ``OSError(EIO)`` there, as a failing disk or a kernel refusal
  would, so the code's real error path runs (the error must name the point's step or phase);
- ``kill``: SIGKILL the process there, as a crash or ``kill -9`` at that moment would;
- ``enospc``: raise ``OSError(ENOSPC)`` there (a full disk).

Points are named ``AREA:WHAT``.  ``step:CLASS`` is each plan step (:mod:`isolate.plan.steps`,
by class name, e.g. ``step:PivotRoot``), checked in the sandbox's child before it applies the
step; the others are listed in :data:`POINTS` with where they are.  The variable is read from the
environment of the process that reaches the point, so set it for the command under test (a
library caller's helper process keeps the environment it started with).  Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ISOLATE_FAULT"

# Every named point outside the plan steps, with where it is: tests fail each one in turn.
POINTS = {
    "cgroup:create": "the supervisor, before it makes the sandbox's cgroup",
    "supervisor:spawned": "the supervisor, after the sandbox's child is cloned, before it is handed back",
    "supervisor:finish": "the supervisor, after the sandbox's first process is reaped, before its accounting is read",
    "monitor:spawn": "`run -d`, before it starts a monitor (none is running)",
    "monitor:plan": "the monitor, after it received a sandbox's plan, before it starts it",
    "monitor:record": "the monitor, after the sandbox started, before it writes its record",
    "monitor:exited": "the monitor, after a sandbox ended and was cleaned up, before it records how",
    "import:read": "image import, before it reads the archive's index and manifest",
    "import:layer": "image import, before each layer is unpacked",
    "import:commit": "image import, before the unpacked image is moved into the store",
}


def active() -> str | None:
    return os.environ.get(ENV) or None


def point(name: str) -> None:
    """Fail here if ``ISOLATE_FAULT`` names ``name`` (see the module's docstring)."""
    spec = os.environ.get(ENV)
    if spec:
        fire(spec, name)


def fire(spec: str, name: str) -> None:
    """Fail at ``name`` if ``spec`` (an ``ISOLATE_FAULT`` value) names it."""
    for item in spec.split(","):
        target, _, action = item.strip().partition("=")
        if target != name:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (fault injected at {name})")
