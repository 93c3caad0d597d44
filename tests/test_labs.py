"""Every lab runs and checks on this machine (and in the cgroup v2 guest, see scripts/test-v2).

The catalogue's own tests come first: they need neither root nor the kernel.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate.labs import LABS, command_line
from isolate.labs.checks import CpuThrottled, FirstLine, Has, HostnameAndOwnIpc, PidsLimitHit, StatusIs, UpperLayerKept

CITED = [(lab.number, code.module, name) for lab in LABS for code in lab.code for name in code.names or ("",)]


def test_catalogue_is_in_order_and_every_lab_cites_code() -> None:
    assert [lab.number for lab in LABS] == list(range(1, len(LABS) + 1))
    for lab in LABS:
        assert lab.code and lab.demos, lab.number
        assert "Code:" not in lab.about and "isolate/" not in lab.about, lab.number  # cited as data, in ``code``
        assert lab.text.startswith(lab.about) and lab.text.splitlines()[-1].startswith("Code: isolate."), lab.number


@pytest.mark.parametrize(("number", "module", "name"), CITED, ids=[f"lab{n}-{m}-{a}" for n, m, a in CITED])
def test_lab_cites_public_code_that_exists(number: int, module: str, name: str) -> None:
    """A rename or a move that leaves a lab pointing at nothing, or at a private name, fails here."""
    parts = [*module.split("."), *(name.split(".") if name else [])]
    assert not [p for p in parts if p.startswith("_")], f"lab {number} cites a private name: {module} ({name})"
    found = importlib.import_module(module)
    for part in name.split(".") if name else []:
        assert hasattr(found, part), f"lab {number} cites {module} ({name}), which has no {part!r}"
        found = getattr(found, part)


def test_checks_say_what_went_wrong() -> None:
    assert Has("a", "b")("a", "b") is None
    assert Has("a", "c")("a", "") == "expected to see ['c']"
    assert FirstLine("1")(" 1 \n3\n", "") is None
    assert FirstLine("2")("", "") == "expected the first line to be '2', got ''"
    own_ipc = os.readlink("/proc/self/ns/ipc")
    assert HostnameAndOwnIpc("lab")("lab\nipc:[1]\n", "") is None
    assert HostnameAndOwnIpc("lab")(f"lab\n{own_ipc}\n", "") == "same ipc namespace?"
    assert StatusIs("oom-killed")('progress\n{"status": "oom-killed"}', "") is None
    assert StatusIs("oom-killed")('{"status": "exited"}', "") == "status exited"
    assert StatusIs("oom-killed")("no json here", "") == "no run result (--json) in the output"
    assert CpuThrottled(0.1, 0.4)('{"cpu_time": 0.2, "nr_throttled": 3}', "") is None
    assert CpuThrottled(0.1, 0.4)('{"cpu_time": 0.9, "nr_throttled": 3}', "") == "cpu_time 0.9, throttled 3"
    assert CpuThrottled(0.1, 0.4)('{"cpu_time": 0.2, "nr_throttled": 0}', "") == "cpu_time 0.2, throttled 0"
    assert PidsLimitHit()('{"pids_limit_hits": 4}', "") is None
    assert PidsLimitHit()('{"pids_limit_hits": 0}', "") == "pids.max was never hit"


def test_upper_layer_check_removes_what_was_kept(tmp_path: Path) -> None:
    check = UpperLayerKept(new="new", deleted="etc/group", changed="etc/passwd")
    assert check("", "") == "no upper layer was kept"
    kept = tmp_path / "kept"
    (kept / "upper").mkdir(parents=True)
    problem = check("", f"isolate: upper layer kept at {kept / 'upper'}")
    assert problem is not None and problem.startswith("upper layer incomplete:")
    assert not kept.exists()


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
