"""Warnings of one ``isolate-oci`` call: collected while it works, written by ``main`` at
its end to stderr and, with ``--log``, to the engine's log."""

from __future__ import annotations

_collected: list[str] = []


def warn(message: str) -> None:
    """Something the engine should hear about that does not stop the call."""
    _collected.append(message)


def collected() -> list[str]:
    """Every warning so far, oldest first."""
    return list(_collected)
