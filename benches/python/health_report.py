"""CPU cost of health-checking 1,000 nodes over TCP every second.

    python benches/python/health_report.py [--nodes N] [--seconds S]

The nodes are served by a separate process (one listening port per 100
nodes), so the figure is the monitor's own CPU time: the process's CPU
seconds divided by wall seconds, in percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time

import langcluster as lc


def serve(ports: list[int], ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        servers = [await asyncio.start_server(accept, "127.0.0.1", p, backlog=1024) for p in ports]
        ready.set()
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def measure(nodes: int, seconds: float, ports: list[int]) -> tuple[float, int]:
    registry = lc.NodeRegistry(
        lc.Node(f"n{i}", "127.0.0.1", ports[i % len(ports)]) for i in range(nodes)
    )
    monitor = lc.HealthMonitor(registry, lc.TcpCheck(timeout_s=0.5), interval_s=1.0, timeout_s=0.5)
    async with monitor:
        await asyncio.sleep(1.5)  # every node checked once: steady state
        cpu0, wall0, runs0 = time.process_time(), time.perf_counter(), monitor.checks_run
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        runs = monitor.checks_run - runs0
    healthy = len(registry.nodes(healthy_only=True))
    print(f"checks run: {runs} in {wall:.1f} s ({runs / wall:.0f}/s); healthy nodes: {healthy}")
    return 100 * cpu / wall, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    opts = parser.parse_args()
    ports = free_ports(max(1, opts.nodes // 100))
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(ports, ready), daemon=True)
    server.start()
    ready.wait(10)
    try:
        percent, _ = asyncio.run(measure(opts.nodes, opts.seconds, ports))
    finally:
        server.terminate()
    print(f"| {opts.nodes} nodes, TCP check every 1 s | {percent:.1f} % of one core |")


if __name__ == "__main__":
    main()
