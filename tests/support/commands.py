"""The commands the tests run: isolate's own CLI, and the host tools engine tests need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# The `isolate` next to the interpreter running the tests (the venv's, or the guest's).
ISOLATE_BIN = os.path.join(os.path.dirname(sys.executable), "isolate")


def cli(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ISOLATE_BIN, *args], input=input, capture_output=True, timeout=timeout)


def require(binary: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is needed by this test; .ci/run installs it"
    return path
