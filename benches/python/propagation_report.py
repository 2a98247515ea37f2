"""How long a registration in one process takes to reach another process's
watcher (and a balancer bound to its registry), on a real etcd and on the
Consul emulator of the test suite.

    python benches/python/propagation_report.py [--runs N]

Starts a throwaway etcd on free loopback ports (Debian's etcd-server must
be installed) and the emulator. The registrant is a separate process; the
time is from just before its register call to the watcher's balancer
holding the node.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import langcluster as lc
from langcluster.discovery import ConsulDiscovery, EtcdDiscovery

REGISTRANT = """
import asyncio, sys, time, langcluster as lc
from langcluster.discovery import EtcdDiscovery
from langcluster.discovery import ConsulDiscovery
async def main():
    if sys.argv[2] == "etcd":
        d = EtcdDiscovery("bench", endpoints=[sys.argv[1]], ttl_s=10)
    else:
        d = ConsulDiscovery("bench", port=int(sys.argv[1].rsplit(":", 1)[1]))
    for line in sys.stdin:
        node_id = line.strip()
        print(time.time(), flush=True)
        await d.register(lc.Node(node_id, "10.0.0.1", 8000))
    await d.close()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(url: str, runs: int, backend: str) -> list[float]:
    registry = lc.NodeRegistry()
    balancer = lc.RoundRobin()
    registry.bind(balancer)
    discovery: lc.Discovery
    if backend == "etcd":
        discovery = EtcdDiscovery("bench", endpoints=[url])
    else:
        discovery = ConsulDiscovery("bench", port=int(url.rsplit(":", 1)[1]), wait_s=30)
    task = registry.attach(discovery)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REGISTRANT, url, backend,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    await asyncio.sleep(1.0)
    delays = []
    for i in range(runs):
        proc.stdin.write(f"n{i}\n".encode())
        await proc.stdin.drain()
        sent = float((await proc.stdout.readline()).decode())
        while len(balancer) < i + 1:
            await asyncio.sleep(0.0005)
        delays.append(time.time() - sent)
    proc.stdin.close()
    await proc.wait()
    task.cancel()
    await discovery.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    opts = parser.parse_args()
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    client, peer = free_port(), free_port()
    with tempfile.TemporaryDirectory() as datadir:
        etcd = subprocess.Popen(
            [
                binary, "--name", "b", "--data-dir", datadir,
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"b=http://127.0.0.1:{peer}",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(3)
            report("etcd", asyncio.run(measure(f"http://127.0.0.1:{client}", opts.runs, "etcd")))
        finally:
            etcd.terminate()
            etcd.wait()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    from tests.support.consul_emulator import ConsulEmulator

    emulator = ConsulEmulator().start()
    try:
        report("Consul emulator", asyncio.run(measure(emulator.url, opts.runs, "consul")))
    finally:
        emulator.stop()


def report(name: str, delays: list[float]) -> None:
    ms = sorted(d * 1000 for d in delays)
    median, p90 = statistics.median(ms), ms[int(len(ms) * 0.9)]
    print(
        f"| {name}, process to process, {len(ms)} registrations | median {median:.1f} ms "
        f"| p90 {p90:.1f} ms | max {ms[-1]:.1f} ms |"
    )


if __name__ == "__main__":
    main()
