"""Unit tests touch no kernel state that outlives them: no leak check, no root needed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Overrides the kernel tiers' leak check (tests/conftest.py)."""
    yield
