"""What the shared-state suites have in common: three simulated servers on
the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from langcluster.testing import SimulatedServer
from tests.support.simulated import servers


@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[list[SimulatedServer]]:
    started = await servers(3, latency_s=0.0)
    yield started
    for server in started:
        await server.kill()
