"""Typed errors.  Each message names the problem and, where there is one, the fix.

The CLI prints ``isolate: <message>`` and exits with ``exit_code``: docker's and runc's
conventions, 125 when isolate itself failed, 126 when the command cannot be executed,
127 when it does not exist.
"""

from __future__ import annotations


class IsolateError(Exception):
    """Base class of every error isolate raises on purpose."""

    exit_code = 125


class ConfigError(IsolateError):
    """The request is wrong: a bad option value, a missing path, a conflict between options."""


class NotRootError(IsolateError):
    """The operation needs privileges the caller does not have."""


class HostSupportError(IsolateError):
    """The kernel or the host lacks something isolate needs (a namespace, overlayfs, ...)."""


class SetupError(IsolateError):
    """A step of building the sandbox failed inside the new namespaces, before the command ran."""

    def __init__(self, message: str, step: str = "", errno: int = 0) -> None:
        super().__init__(message)
        self.step = step
        self.errno = errno


class CommandNotFoundError(SetupError):
    exit_code = 127


class CommandNotExecutableError(SetupError):
    exit_code = 126
