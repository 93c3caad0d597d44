"""Every parser of outside input, fed hostile cases: only IsolateError comes out, as one line,
and nothing outside the parser's target directory changes.

The parsers and their strategies are the rows of fuzz_targets.TARGETS; this one property runs
each.  Per case: a fresh workspace holding ``target/`` (the parser's to write in) and
``outside/`` (a sentinel: a file, a directory, a hard-linkable inode), then after the parser:

- the exception, if any, is an IsolateError whose message is one non-empty line;
- everything beside ``target/`` is as it was (names, types, modes, owners, link counts,
  contents: a hard link from the target to a sentinel file would raise its link count);
- every directory under ``target/`` resolves inside it, and every hard link of a file under it
  is under it too;
- no descriptor and no thread is left, and the case ends within CASE_SECONDS (a Python-level
  loop; a single C call such as ``set(range(10**12))`` cannot be interrupted, so the address
  space grows by at most CASE_MEMORY instead: MemoryError, not the OOM killer).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fuzz_targets import STATS, TARGETS, Target, Workspace
from hypothesis import given, settings

from isolate.errors import IsolateError

CASE_SECONDS = 20  # a parser that takes longer on a case of a few KiB is stuck (or quadratic)
CASE_MEMORY = 1 << 30  # bytes of address space one case may add


class CaseTimeout(BaseException):
    """Raised in the parser by SIGALRM: a BaseException, so no `except Exception` swallows it."""


@contextmanager
def memory_limit(extra: int) -> Iterator[None]:
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"the parser ran for more than {seconds} s on one case")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_workspace(root: Path) -> Workspace:
    ws = Workspace(root, root / "target", root / "outside")
    ws.target.mkdir(parents=True)
    (ws.outside / "dir").mkdir(parents=True)
    (ws.outside / "victim").write_bytes(b"sentinel: must never change\n")
    (ws.outside / "dir" / "inner").write_bytes(b"inner\n")
    os.link(ws.outside / "victim", ws.outside / "dir" / "victim-link")
    return ws


def snapshot(ws: Workspace) -> dict[str, tuple[Any, ...]]:
    """Everything in the workspace but the target's content, as lstat and content."""
    seen: dict[str, tuple[Any, ...]] = {}
    target = os.lstat(ws.target)
    seen["target"] = (stat.S_IFMT(target.st_mode), target.st_ino)
    for dirpath, dirnames, filenames in os.walk(ws.root):
        if Path(dirpath) == ws.root:
            dirnames[:] = [d for d in dirnames if d != "target"]
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            seen[os.path.relpath(path, ws.root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                                    st.st_nlink, st.st_ino, content)  # fmt: skip
    return seen


def check_contained(ws: Workspace, before: dict[str, tuple[Any, ...]]) -> None:
    after = snapshot(ws)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the parser changed what is outside its target: {changed}"
    real = os.path.realpath(ws.target)
    links: dict[tuple[int, int], list[Any]] = {}
    for dirpath, _, filenames in os.walk(ws.target):
        resolved = os.path.realpath(dirpath)
        assert resolved == real or resolved.startswith(real + "/"), f"{dirpath} resolves to {resolved}"
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                links.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0])[1] += 1
    outward = [key for key, (nlink, found) in links.items() if found != nlink]
    assert not outward, f"a file under the target has hard links outside it: inodes {outward}"


def remove(root: Path) -> None:
    def unlock(func: Any, path: str, exc: Any) -> None:  # modes like 000 from a hostile layer (non-root runs)
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(root, onerror=unlock)


def signature(exc: BaseException) -> str:
    """Where a failure comes from: its type and the innermost frame in isolate's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/isolate/" in f.filename]
    where = f"{frames[-1].filename.rsplit('/isolate/', 1)[1]}:{frames[-1].lineno}" if frames else "the harness"
    return f"{type(exc).__name__} at {where}"


def run_case(target: Target, case: Any, base: Path) -> None:
    stats = STATS.setdefault(target.name, {"cases": 0, "accepted": 0, "refused": 0, "failures": set()})
    stats["cases"] += 1
    ws = make_workspace(base / f"case{stats['cases']}")
    before, fds, threads = snapshot(ws), set(os.listdir("/proc/self/fd")), threading.active_count()
    try:
        try:
            with memory_limit(CASE_MEMORY), time_limit(CASE_SECONDS):
                target.feed(case, ws)
            stats["accepted"] += 1
        except IsolateError as exc:
            stats["refused"] += 1
            text = str(exc)
            assert text.strip() and "\n" not in text, f"{type(exc).__name__}: not one line: {text!r}"
        check_contained(ws, before)
        assert set(os.listdir("/proc/self/fd")) == fds, "the parser left a descriptor open"
        assert threading.active_count() == threads, "the parser left a thread running"
    except BaseException as exc:
        stats["failures"].add(signature(exc))
        raise
    finally:
        remove(ws.root)


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_only_isolate_error_escapes(target: Target, tmp_path: Path) -> None:
    cases = max(1, round(settings.default.max_examples * target.scale))

    @settings(max_examples=cases)
    @given(case=target.strategy)
    def parser_survives(case: Any) -> None:
        run_case(target, case, tmp_path)

    parser_survives()
