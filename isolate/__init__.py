"""isolate: a minimal container runtime built from Linux isolation primitives.

    >>> from isolate import Sandbox, Limits
    >>> result = Sandbox(limits=Limits(memory="64M", pids=32)).run(["sh", "-c", "echo $$"], capture=True)
    >>> result.stdout, result.status, result.cgroup
    (b'1\\n', 'ok', 'v1')

Importing this package stays cheap: no click, psutil or cgroupspy here.
"""

from isolate.config import Tmpfs, Volume
from isolate.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    ConfigError,
    HostSupportError,
    IsolateError,
    NotRootError,
    SetupError,
)
from isolate.limits import Limits
from isolate.result import RunResult
from isolate.sandbox import Sandbox

__all__ = [
    "Sandbox",
    "Limits",
    "RunResult",
    "Volume",
    "Tmpfs",
    "IsolateError",
    "ConfigError",
    "NotRootError",
    "HostSupportError",
    "SetupError",
    "CommandNotFoundError",
    "CommandNotExecutableError",
]
__version__ = "0.1.0"
