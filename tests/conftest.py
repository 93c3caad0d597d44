"""Shared fixtures for the three tiers of tests:

- tests/unit/: pure functions and the child core; seconds, no root, no sandbox;
- tests/kernel/: isolate on the real kernel (namespaces, cgroups, mounts), as root;
- tests/engines/: podman, containerd and the OCI runtime-tools suite driving isolate-oci;
- tests/fuzz/: every parser of outside input fed hostile cases (hypothesis); no root needed.

Every kernel and engine test is checked for leaks (tests/unit/conftest.py turns that off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.host import helper_sockets, host_mounts, open_fds, sandbox_cgroups, sandbox_children, state_entries


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        return
    rootless = tuple(os.path.join(os.path.dirname(__file__), tier) + os.sep for tier in ("unit", "fuzz"))
    if any(not str(item.path).startswith(rootless) for item in session.items):
        pytest.exit("isolate's kernel and engine tests create real namespaces and mounts: run them as root "
                    "(tests/unit/ and tests/fuzz/ run without)", returncode=2)  # fmt: skip


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After every test: no new host mount, open descriptor, state entry, cgroup or child process."""
    mounts, fds, state = host_mounts(), open_fds(), state_entries()
    yield
    assert sandbox_cgroups() == [], "a sandbox cgroup was left behind"
    assert host_mounts() == mounts, "a mount leaked onto the host"
    assert state_entries() - state == set(), "isolate left files in its state directory"
    leaked = open_fds() - fds - helper_sockets()
    assert not leaked, f"descriptors leaked: {[os.readlink(f'/proc/self/fd/{fd}') for fd in leaked]}"
    assert sandbox_children() == [], "a sandbox process outlived its run"


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem built with isolate's own builder (needs busybox-static)."""
    from isolate.images.busybox import build_busybox_rootfs

    dest = tmp_path_factory.mktemp("busybox") / "root"
    build_busybox_rootfs(str(dest))
    return dest


@pytest.fixture()
def marker() -> str:
    """A word unique to this test, to find its processes on the host."""
    return "isolate-test-" + os.urandom(4).hex()
