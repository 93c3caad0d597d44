"""isolate: a minimal container runtime built from Linux isolation primitives.

    >>> from isolate import Sandbox
    >>> result = Sandbox().run(["sh", "-c", "echo $$"], capture=True)
    >>> result.stdout
    b'1\\n'

Importing this package stays cheap: no click, psutil or cgroupspy here.
"""

from .config import Tmpfs, Volume
from .errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    ConfigError,
    HostSupportError,
    IsolateError,
    NotRootError,
    SetupError,
)
from .result import RunResult
from .sandbox import Sandbox

__all__ = [
    "Sandbox",
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
