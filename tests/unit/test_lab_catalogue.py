"""The labs' catalogue is data: in order, citing public code that exists, with checks that
say what went wrong.  tests/kernel/test_labs.py runs every lab for real."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from isolate.labs import LABS
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
