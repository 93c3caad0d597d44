"""The fuzz tier: hypothesis profiles and the per-parser count of cases tried.

Profiles (``HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: 200 cases per parser (fewer for the slow ones, see ``Target.scale``), derandomized so
  a CI run is the same run every time, no example database written into the tree;
- ``long``: 10,000 cases per parser, random, for ``scripts/fuzz``.

``ISOLATE_FUZZ_EXAMPLES=N`` sets the cases per parser of either profile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from support.host import open_fds

_examples = os.environ.get("ISOLATE_FUZZ_EXAMPLES")
_common = {"deadline": None, "database": None, "print_blob": True, "suppress_health_check": list(HealthCheck)}
settings.register_profile("ci", max_examples=int(_examples or 200), derandomize=True, **_common)
settings.register_profile("long", max_examples=int(_examples or 10_000), derandomize=False, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Replaces the kernel tiers' host-wide check (tests/conftest.py): the parsers make no sandbox,
    and the other tiers' sandboxes on a shared host must not fail this one.  What a parser could
    leave is checked here (descriptors, child processes) and per case in test_parsers.py."""
    fds = open_fds()
    yield
    assert open_fds() - fds == set(), "a parser left a descriptor open"
    assert not _children(), "a parser left a child process"


def _children() -> list[str]:
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return f.read().split()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from fuzz_targets import STATS

    if not STATS:
        return
    write = terminalreporter.write_line
    write(f"fuzz ({settings.default.max_examples} cases per parser asked, profile "
          f"{os.environ.get('HYPOTHESIS_PROFILE', 'ci')}):")  # fmt: skip
    for name, s in STATS.items():
        failures = "".join(f"; {f}" for f in sorted(s["failures"]))
        write(f"  {name:18} {s['cases']:7} cases: {s['accepted']:7} accepted, {s['refused']:7} refused "
              f"(IsolateError), {len(s['failures'])} failures{failures}")  # fmt: skip
    total = sum(s["cases"] for s in STATS.values())
    write(f"  {'total':18} {total:7} cases, {sum(len(s['failures']) for s in STATS.values())} failures")
