"""Every lab runs and checks on this machine (and in the cgroup v2 guest, see scripts/test-v2).

The catalogue's own tests, which need neither root nor the kernel, are in
tests/unit/test_lab_catalogue.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate.labs import LABS, command_line


@pytest.fixture(autouse=True)
def quiet_monitor() -> Iterator[None]:
    """Lab 14 starts detached sandboxes: once removed, the idle monitor exits with its socket."""
    import time

    from isolate.config import default_state_dir
    from isolate.detached.monitor import socket_path

    yield
    deadline = time.monotonic() + 5
    while os.path.exists(socket_path(default_state_dir())) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    store = tmp_path_factory.mktemp("lab-store")
    yield dict(os.environ, ISOLATE_ROOT=str(store))


def isolate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolate", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize("number", [lab.number for lab in LABS])
def test_lab_runs_and_checks(number: int, lab_env: dict[str, str]) -> None:
    lab = next(item for item in LABS if item.number == number)
    shown = isolate(lab_env, "lab", "show", str(number))
    assert shown.returncode == 0 and all(command_line(d) in shown.stdout for d in lab.demos)
    ran = isolate(lab_env, "lab", "run", str(number))
    assert ran.returncode == 0, ran.stderr
    assert all(f"$ {command_line(d)}" in ran.stdout for d in lab.demos)
    assert ran.stdout.count("-> as the lab says") == len(lab.demos), ran.stdout
    checked = isolate(lab_env, "lab", "check", str(number))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("[ok  ]") == len(lab.demos)


def test_lab_list_and_unknown(lab_env: dict[str, str]) -> None:
    listed = isolate(lab_env, "lab", "list").stdout.splitlines()
    assert len(listed) == len(LABS) and "chroot" in listed[0]
    unknown = isolate(lab_env, "lab", "show", "99")
    assert unknown.returncode != 0


def test_labs_leave_no_kept_layers(lab_env: dict[str, str]) -> None:
    from isolate.config import default_state_dir

    hexdigits = set("0123456789abcdef")
    assert not [p for p in Path(default_state_dir()).iterdir() if len(p.name) == 12 and set(p.name) <= hexdigits]
