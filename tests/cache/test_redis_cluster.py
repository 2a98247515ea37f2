"""RedisCache over a real three-master Redis Cluster (redis-server processes
joined by redis-cli on loopback)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.cluster import RedisCluster

from langcluster.cache import RedisCache
from tests.support.helpers import name

pytestmark = pytest.mark.services


def test_the_same_api_over_a_cluster_spreads_keys_over_every_master(redis_cluster: Any) -> None:
    cache = RedisCache(redis_cluster.url, namespace="rc1", cluster=True)
    assert cache.cluster
    values = {f"prompt-{i}": {"n": i} for i in range(600)}
    cache.set_many(values)
    assert cache.get("prompt-7") == {"n": 7}
    assert cache.get_many([*values, "absent"]) == values
    assert len(cache) == 600
    # Every master holds part of the namespace: no hash tag pins it to one slot.
    raw = RedisCluster.from_url(redis_cluster.url)
    per_master = [raw.dbsize(target_nodes=node) for node in raw.get_primaries()]
    assert len(per_master) == 3
    assert all(n > 0 for n in per_master), per_master
    assert cache.delete_many(["prompt-1", "prompt-2", "absent"]) == 2
    assert cache.pop("prompt-3") == {"n": 3}
    assert cache.clear() == 597
    assert cache.keys() == []
    cache.close()
    raw.close()


def test_batches_are_one_pipeline_per_master(redis_cluster: Any) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    cache = RedisCache(client=client, namespace="rc2")
    assert cache.cluster  # found from the client's type
    keys = [f"k{i}" for i in range(20_000)]  # more keys than slots: some must share one
    cache.set_many(dict.fromkeys(keys, 1))
    before = {n.name: n.redis_connection.info("commandstats") for n in client.get_primaries()}
    assert len(cache.get_many(keys)) == 20_000
    after = {n.name: n.redis_connection.info("commandstats") for n in client.get_primaries()}
    mgets = sum(
        after[n]["cmdstat_mget"]["calls"] - before[n].get("cmdstat_mget", {"calls": 0})["calls"]
        for n in after
    )
    # One MGET per hash slot touched, never one GET per key.
    slots = {client.keyslot(name("rc2", k)) for k in keys}
    assert mgets == len(slots) < 16_384
    gets = sum(
        after[n].get("cmdstat_get", {"calls": 0})["calls"]
        - before[n].get("cmdstat_get", {"calls": 0})["calls"]
        for n in after
    )
    assert gets == 0
    cache.clear()
    cache.close()


def test_async_twins_over_a_cluster(redis_cluster: Any) -> None:
    async def main() -> None:
        cache = RedisCache(redis_cluster.url, namespace="rc3", cluster=True)
        await cache.aset_many({f"a{i}": i for i in range(200)})
        assert await cache.aget("a5") == 5
        got = await cache.aget_many([f"a{i}" for i in range(210)])
        assert got == {f"a{i}": i for i in range(200)}
        assert await cache.adelete_many(["a1", "a2"]) == 2
        assert await cache.aclear() == 198
        await cache.aclose()
        cache.close()

    asyncio.run(main())
