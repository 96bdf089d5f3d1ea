"""Fixtures of the engine tests: a running small engine over a temporary backing directory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.engine.enginetools import new_engine
from ubcfs.vfs.engine import Engine


@pytest.fixture
async def eng() -> AsyncIterator[Engine]:
    """A running engine of 64 frames, 8 windows of 16 KiB: the pagedaemon works constantly.
    Leaving it writes every dirty page back."""
    async with new_engine().running() as e:
        yield e
