"""The fuzz property itself catches what it claims to: a parser that writes outside its target,
links out of it, leaks a descriptor, raises something else than IsolateError, prints two lines
or hangs fails the case.  Without these a property that never fails would prove nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import test_parsers as P
from fuzz_targets import STATS, Target, Workspace
from hypothesis import strategies as st

from isolate.errors import ConfigError


@pytest.fixture(autouse=True)
def _not_counted() -> Any:
    """These cases test the harness: they stay out of the per-parser counts."""
    yield
    STATS.pop("harness-check", None)


def run(feed: Any, tmp_path: Path) -> None:
    P.run_case(Target("harness-check", st.none(), feed), None, tmp_path)


def test_a_parser_that_only_refuses_passes(tmp_path: Path) -> None:
    def refuse(case: Any, ws: Workspace) -> None:
        (ws.target / "partial").write_bytes(b"x")
        raise ConfigError("bad input; fix it")

    run(refuse, tmp_path)
    assert os.listdir(tmp_path) == [], "the case's workspace is removed"


@pytest.mark.parametrize(
    "escape",
    [
        lambda ws: (ws.outside / "victim").write_bytes(b"changed"),
        lambda ws: (ws.root / "sibling").mkdir(),
        lambda ws: os.link(ws.outside / "victim", ws.target / "hardlink-out"),
        lambda ws: os.chmod(ws.outside / "dir", 0o777),
        lambda ws: (ws.outside / "dir" / "inner").unlink(),
        lambda ws: (os.rmdir(ws.target), os.symlink(ws.outside, ws.target)),
    ],
    ids=["write", "create-beside", "hard-link-out", "chmod", "unlink", "target-swapped-for-symlink"],
)
def test_an_escape_fails_the_case(escape: Any, tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        run(lambda case, ws: escape(ws), tmp_path)


def test_a_hard_link_out_of_the_target_fails_the_case(tmp_path: Path) -> None:
    def link_out(case: Any, ws: Workspace) -> None:
        (ws.target / "f").write_bytes(b"x")
        os.link(ws.target / "f", ws.root / "outside-link")  # the target's file gains a name outside

    with pytest.raises(AssertionError, match="outside its target|hard links outside"):
        run(link_out, tmp_path)


def test_another_exception_fails_the_case(tmp_path: Path) -> None:
    def crash(case: Any, ws: Workspace) -> None:
        raise KeyError("Config")

    with pytest.raises(KeyError):
        run(crash, tmp_path)


def test_a_message_of_two_lines_fails_the_case(tmp_path: Path) -> None:
    def two_lines(case: Any, ws: Workspace) -> None:
        raise ConfigError("bad\ninjected log line")

    with pytest.raises(AssertionError, match="not one line"):
        run(two_lines, tmp_path)


def test_a_leaked_descriptor_fails_the_case(tmp_path: Path) -> None:
    fds: list[int] = []

    def leak(case: Any, ws: Workspace) -> None:
        fds.append(os.open(ws.target, os.O_RDONLY))

    try:
        with pytest.raises(AssertionError, match="descriptor"):
            run(leak, tmp_path)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_stuck_parser_fails_the_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "CASE_SECONDS", 0.2)

    def stuck(case: Any, ws: Workspace) -> None:
        while True:
            pass

    with pytest.raises(P.CaseTimeout):
        run(stuck, tmp_path)


def test_a_parser_eating_memory_fails_the_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "CASE_MEMORY", 64 << 20)

    def greedy(case: Any, ws: Workspace) -> None:
        set(range(10**12))  # what parse_cpuset("0-999999999999") did: one C call, deaf to the alarm

    with pytest.raises(MemoryError):
        run(greedy, tmp_path)
