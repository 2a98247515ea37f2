"""LangClusterCache with langchain_core's fake models: the second identical
call is served from the cache, generation types survive, clear() keeps to
its namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from langcluster import LayeredCache, MemoryCache, RedisCache
from langcluster.integrations.langchain import LangClusterCache


@pytest.fixture(params=["memory", "redis", "layered"])
def backing(request: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryCache(1000)
        return
    server = request.getfixturevalue("redis_server")
    l2 = RedisCache(f"redis://{server.url}/0", namespace="lc-test")
    if request.param == "redis":
        yield l2
        l2.close()
        return
    cache = LayeredCache(MemoryCache(1000), l2)
    yield cache
    cache.close()


def test_the_second_identical_call_is_served_from_the_cache(backing: Any) -> None:
    cache = LangClusterCache(backing)
    llm = FakeListLLM(responses=["first answer", "second answer"], cache=cache)
    assert llm.invoke("What is a circuit breaker?") == "first answer"
    # A fresh call would return "second answer"; the cache answers instead.
    assert llm.invoke("What is a circuit breaker?") == "first answer"
    assert llm.invoke("Another prompt") == "second answer"


def test_chat_generations_keep_their_types(backing: Any) -> None:
    cache = LangClusterCache(backing)
    chat = FakeListChatModel(responses=["hello", "other"], cache=cache)
    first = chat.invoke("hi")
    second = chat.invoke("hi")
    assert isinstance(second, AIMessage)
    assert second.content == first.content == "hello"
    assert cache.lookup("hi", "another model") is None  # an unknown key is a miss


def test_lookup_update_keep_every_generation(backing: Any) -> None:
    cache = LangClusterCache(backing, ttl=60)
    generations = [
        Generation(text="a", generation_info={"finish_reason": "stop"}),
        ChatGeneration(message=AIMessage(content="b", id="run-1")),
    ]
    cache.update("prompt", "model=x", generations)
    got = cache.lookup("prompt", "model=x")
    assert got == generations
    assert type(got[1]) is ChatGeneration  # type: ignore[index]
    assert cache.lookup("prompt", "model=y") is None  # the model is part of the key


def test_async_methods(backing: Any) -> None:
    async def main() -> None:
        cache = LangClusterCache(backing)
        await cache.aupdate("p", "m", [Generation(text="async")])
        assert await cache.alookup("p", "m") == [Generation(text="async")]
        llm = FakeListLLM(responses=["one", "two"], cache=cache)
        assert await llm.ainvoke("q") == "one"
        assert await llm.ainvoke("q") == "one"
        await cache.aclear()
        assert await cache.alookup("p", "m") is None
        if hasattr(backing, "aclose"):
            await (backing.l2 if isinstance(backing, LayeredCache) else backing).aclose()

    asyncio.run(main())


def test_clear_keeps_to_its_namespace(backing: Any) -> None:
    mine, theirs = LangClusterCache(backing), LangClusterCache(backing, namespace="other")
    mine.update("p", "m", [Generation(text="mine")])
    theirs.update("p", "m", [Generation(text="theirs")])
    backing.set("unrelated", "kept")
    mine.clear()
    assert mine.lookup("p", "m") is None
    assert theirs.lookup("p", "m") == [Generation(text="theirs")]
    assert backing.get("unrelated") == "kept"


def test_a_damaged_entry_is_a_miss(backing: Any) -> None:
    cache = LangClusterCache(backing)
    backing.set(cache._key("p", "m"), '{"lc": 1, "type": "constructor", "id": ["os", "system"]}')
    assert cache.lookup("p", "m") is None


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="cache"):
        LangClusterCache({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        LangClusterCache(MemoryCache(10), namespace="a:b")
    with pytest.raises(ValueError, match="ttl"):
        LangClusterCache(MemoryCache(10), ttl=0)
