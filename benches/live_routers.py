"""The real Rust routers beside PrefixAware, live: simulated model servers
in a process of their own, multi-turn chats through the real OpenAI SDK,
streamed, and each router's cache hit rate, time to first token and CPU
per request.

    pip install sglang-router vllm-router          # their PyPI wheels carry the binaries
    python benches/live_routers.py                 # about two minutes
    python benches/live_routers.py --only ours,sglang   # again with every core busy

Routers (each in front of the same servers, restarted cold between runs):
- ``vllm-router`` ``round_robin``, ``cache_aware`` (its defaults; it asks the
  servers to render each chat to token ids, which they do) and
  ``kv_aware`` (fed the servers' KV events over ZeroMQ);
- ``sglang-router`` ``cache_aware`` (its defaults);
- ours, in the client process: ``AsyncClusterTransport`` over a
  ``PrefixAware`` cluster, knowing each server's cache size; and in exact
  mode (``Cluster(kv_events=True)``, the servers' tokenizer). Then four
  such routers sharing nothing (as four worker processes without
  ``SharedState`` would), each request dealt to one of them at random:
  approximate, each knows only what it sent; exact, each hears every
  server.

Figures: the servers' cached-token rate over prompt tokens (from each
answer's usage), TTFT p50/p99 as the client sees it, requests per second,
and CPU per request: the router process's own (user + system time over the
run), and the client process's (the SDK's work, and ours in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import langcluster as lc
from langcluster.testing.openai_api import tokenize

SERVERS = 4
SERVER_PROCESS = """
import asyncio, json, sys
from langcluster.testing import SimulatedServer

async def main(n, blocks):
    servers = []
    for i in range(n):
        s = SimulatedServer(f"s{i}", kv_events=True, cache_blocks=blocks, latency_s=0.002,
                            prefill_per_token_s=2e-5, decode_per_token_s=0.004,
                            max_running=64, max_queue=1024, seed=i)
        servers.append(await s.start())
    print(json.dumps([[s.port, s.publisher.endpoint, s.publisher.replay_endpoint]
                      for s in servers]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

SYSTEMS = [
    f"[system prompt {g}] You are a careful assistant for team {g}. " * 24 for g in range(16)
]


def conversation_turns(conversations: int, turns: int, seed: int) -> list[list[dict[str, str]]]:
    """Each conversation's message lists, turn by turn (a system prompt of
    16, then growing history)."""
    rng = random.Random(seed)
    out = []
    for c in range(conversations):
        history = [{"role": "system", "content": SYSTEMS[rng.randrange(16)]}]
        chat = []
        for t in range(turns):
            history = [*history, {"role": "user", "content": f"[chat {c} turn {t}] " * 30}]
            chat.append(list(history))
            history = [*history, {"role": "assistant", "content": f"[answer {c}.{t}] " * 10}]
        out.append(chat)
    return out


def cpu_of(pid: int) -> float:
    """User + system seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def run_chats(
    clients: list[Any], conversations: list[list[Any]], concurrency: int
) -> dict[str, Any]:
    """Every conversation's turns in order, ``concurrency`` conversations
    at once, each request through one of ``clients`` at random (as a load
    balancer in front of a service's workers deals them); per request its
    TTFT, prompt and cached tokens."""
    rng = random.Random(7)
    ttfts: list[float] = []
    prompt = cached = failed = 0
    queue = list(conversations)

    async def worker() -> None:
        nonlocal prompt, cached, failed
        while queue:
            chat = queue.pop()
            for messages in chat:
                started = time.perf_counter()
                first = None
                client = rng.choice(clients)
                try:
                    stream = await client.chat.completions.create(
                        model="simulated", messages=messages, stream=True, max_tokens=12,
                        stream_options={"include_usage": True},
                    )  # fmt: skip
                    async for chunk in stream:
                        if first is None and chunk.choices:
                            first = time.perf_counter() - started
                        if chunk.usage is not None:
                            prompt += chunk.usage.prompt_tokens
                            details = chunk.usage.prompt_tokens_details
                            cached += (details.cached_tokens or 0) if details else 0
                except Exception:
                    failed += 1
                    continue
                if first is not None:
                    ttfts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - started
    ttfts.sort()
    return {
        "requests": len(ttfts),
        "failed": failed,
        "hit_rate": cached / prompt if prompt else 0.0,
        "ttft_p50_s": ttfts[len(ttfts) // 2] if ttfts else float("nan"),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan"),
        "rps": len(ttfts) / took,
    }


def start_servers(blocks: int) -> tuple[subprocess.Popen[str], list[list[Any]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_PROCESS, str(SERVERS), str(blocks)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def router_command(name: str, servers: list[list[Any]], port: int) -> list[str] | None:
    urls = [f"http://127.0.0.1:{p}" for p, _, _ in servers]
    kind, _, policy = name.partition(" ")
    exe = shutil.which(f"{kind}-router") or str(Path(sys.executable).parent / f"{kind}-router")
    if not Path(exe).exists():
        return None
    args = [exe, *(["launch"] if kind == "sglang" else [])]
    args += ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls, "--policy", policy]
    if policy == "kv_aware":
        for url, (_, pub, replay) in zip(urls, servers, strict=True):
            args += [
                "--kv-event-source",
                f"{url}={pub}",
                "--kv-event-replay-source",
                f"{url}={replay}",
            ]
        args += ["--kv-event-block-size", "16", "--kv-event-model", "simulated"]
    return args


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    await asyncio.sleep(1.0)  # its workers' first health checks
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


async def one(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    import openai

    chats = conversation_turns(args.conversations, args.turns, seed=1)
    proc, servers = start_servers(args.cache_blocks)
    router: subprocess.Popen[bytes] | None = None
    try:
        if name.startswith("ours"):
            exact = "exact" in name
            replicas = 4 if "x4" in name else 1
            nodes = [
                lc.Node(f"s{i}", "127.0.0.1", port,
                        metadata={"kv_events": pub, "kv_events_replay": replay})
                for i, (port, pub, replay) in enumerate(servers)
            ]  # fmt: skip
            options: dict[str, Any] = {"seed": 1}
            options.update({"tokenizer": tokenize} if exact else {"node_blocks": args.cache_blocks})
            clusters, clients = [], []
            for _ in range(replicas):  # routers that share nothing but the servers' events
                cluster = lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware",
                                     balancer_options=options, kv_events=exact)  # fmt: skip
                await cluster.astart()
                # The SDK's own client (httpx2's in the SDK 3.x), as the peers' clients.
                transport = lc.AsyncClusterTransport(cluster, key="auto")
                http = openai.DefaultAsyncHttpxClient(transport=transport)
                clusters.append(cluster)
                clients.append(openai.AsyncOpenAI(base_url="http://chat/v1", api_key="-",
                                                  max_retries=0, http_client=http))  # fmt: skip
            cpu0 = own_cpu()
            figures = await run_chats(clients, chats, args.concurrency)
            figures["client_cpu_ms"] = 1000 * (own_cpu() - cpu0) / max(1, figures["requests"])
            figures["router_cpu_ms"] = 0.0
            for client, cluster in zip(clients, clusters, strict=True):
                await client.close()
                await cluster.aclose()
        else:
            command = router_command(name, servers, args.port)
            if command is None:
                print(f"{name}: not installed (pip install sglang-router vllm-router)")
                return None
            router = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{args.port}"
            await wait_ready(base)
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="-", max_retries=0)
            cpu0, rcpu0 = own_cpu(), cpu_of(router.pid)
            figures = await run_chats([client], chats, args.concurrency)
            n = max(1, figures["requests"])
            figures["client_cpu_ms"] = 1000 * (own_cpu() - cpu0) / n
            figures["router_cpu_ms"] = 1000 * (cpu_of(router.pid) - rcpu0) / n
            await client.close()
    finally:
        if router is not None:
            router.terminate()
            router.wait()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    return {"router": name, **figures}


NAMES = [
    "vllm round_robin",
    "vllm cache_aware",
    "vllm kv_aware",
    "sglang cache_aware",
    "ours",
    "ours exact",
    "ours x4",
    "ours x4 exact",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=160)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--cache-blocks", type=int, default=256, help="per server, 16 tokens a block"
    )
    parser.add_argument("--port", type=int, default=39231)
    parser.add_argument("--only", help="comma-separated prefixes of router names")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each router (medians)")
    args = parser.parse_args()
    names = [
        n for n in NAMES if not args.only or any(n.startswith(o) for o in args.only.split(","))
    ]
    print("| router | requests | failed | hit % | TTFT p50 ms | TTFT p99 ms | req/s "
          "| router CPU ms/req | client CPU ms/req |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rows = [r for _ in range(args.rounds) if (r := asyncio.run(one(name, args)))]
        if not rows:
            continue
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "router"}
        print(f"| {name} | {m['requests']:.0f} | {m['failed']:.0f} | {100 * m['hit_rate']:.1f} "
              f"| {1000 * m['ttft_p50_s']:.1f} | {1000 * m['ttft_p99_s']:.1f} | {m['rps']:.0f} "
              f"| {m['router_cpu_ms']:.2f} | {m['client_cpu_ms']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
