"""Real servers for the tests, on free loopback ports: redis-server (one,
restartable, or a three-master cluster), etcd, and Consul (a real agent
when one is configured or installed, else the emulator in
``consul_emulator``). A missing server skips the test locally and fails it
when LANGCLUSTER_REQUIRE_SERVICES=1 (CI sets it).

Registered as a pytest plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support.consul_emulator import ConsulEmulator

REQUIRE_SERVICES = os.environ.get("LANGCLUSTER_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail when the run requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (LANGCLUSTER_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


def require_binary(name: str, package: str) -> str:
    """The server binary's path; skips the test (fails it in CI) when absent."""
    # Debian installs etcd under /usr/bin; sbin paths are absent from some PATHs.
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if binary is None:
        skip_or_fail(f"{name} is not installed (apt-get install -y {package})")
    assert binary is not None
    return binary


@dataclass
class Server:
    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


@contextmanager
def running(command: list[str], port: int, *, timeout_s: float = 10.0) -> Iterator[Server]:
    """Starts `command`, waits until it listens on `port`, and always stops it."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout_s)
        yield Server("127.0.0.1", port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_server() -> Iterator[Server]:
    """A fresh redis-server on a free loopback port, without persistence."""
    binary = require_binary("redis-server", "redis-server")
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="langcluster-redis-") as workdir,
        running(redis_command(binary, port, workdir), port) as server,
    ):
        yield server


def etcd_command(binary: str, client: int, peer: int, datadir: str) -> list[str]:
    """A single-member etcd on loopback ports, storing in `datadir`."""
    return [
        binary, "--name", "test", "--data-dir", datadir,
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"test=http://127.0.0.1:{peer}",
    ]  # fmt: skip


@pytest.fixture
def etcd_server() -> Iterator[Server]:
    """A fresh single-member etcd on free loopback ports (client and peer)."""
    binary = require_binary("etcd", "etcd-server")
    client, peer = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="langcluster-etcd-") as datadir:
        command = etcd_command(binary, client, peer, datadir)
        with running(command, client, timeout_s=20.0) as server:
            yield server


class RestartableServer:
    """A server that a test can stop and start again on the same ports."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.host = "127.0.0.1"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.process, timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to flush or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def etcd_restartable() -> Iterator[RestartableServer]:
    """Like `etcd_server`, but the test may stop and restart it (same ports,
    same data directory)."""
    binary = require_binary("etcd", "etcd-server")
    client, peer = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="langcluster-etcd-") as datadir:
        command = etcd_command(binary, client, peer, datadir)
        server = RestartableServer(command, client)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def redis_command(binary: str, port: int, workdir: str, *extra: str) -> list[str]:
    """A redis-server on a loopback port, without persistence."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, *extra]  # fmt: skip


@pytest.fixture
def redis_restartable() -> Iterator[RestartableServer]:
    """Like `redis_server`, but the test may kill it and start it again on the
    same port (empty: it keeps nothing on disk)."""
    binary = require_binary("redis-server", "redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="langcluster-redis-") as workdir:
        server = RestartableServer(redis_command(binary, port, workdir), port)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def cluster_ports(n: int) -> list[int]:
    """`n` free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class RedisClusterServers:
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """Three real redis-server masters joined into a cluster by redis-cli
    (no replicas), on free loopback ports."""
    binary = require_binary("redis-server", "redis-server")
    cli = require_binary("redis-cli", "redis-tools")
    ports = cluster_ports(3)
    with contextlib.ExitStack() as stack:
        for port in ports:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="langcluster-rc-"))
            command = redis_command(binary, port, workdir, "--cluster-enabled", "yes",
                                    "--cluster-config-file", f"{workdir}/nodes.conf")  # fmt: skip
            stack.enter_context(running(command, port))
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = [
                subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for p in ports
            ]
            if all("cluster_state:ok" in s for s in states):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the redis cluster did not come up: {states}")
            time.sleep(0.1)
        yield RedisClusterServers(ports)


@dataclass
class Agent:
    host: str
    port: int
    emulator: ConsulEmulator | None


@pytest.fixture
def consul_agent() -> Iterator[Agent]:
    """A real agent if one is configured or installed, else the emulator."""
    address = os.environ.get("CONSUL_HTTP_ADDR")
    binary = shutil.which("consul")
    if address:
        parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
        yield Agent(parsed.hostname or "127.0.0.1", parsed.port or 8500, None)
    elif binary:
        port = free_port()
        proc = subprocess.Popen(
            [binary, "agent", "-dev", f"-http-port={port}", "-dns-port=-1", "-grpc-port=-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port, proc, 20)
            time.sleep(1)  # a real agent elects itself leader after it listens
            yield Agent("127.0.0.1", port, None)
        finally:
            proc.terminate()
            proc.wait()
    else:
        emulator = ConsulEmulator().start()
        try:
            yield Agent("127.0.0.1", emulator.port, emulator)
        finally:
            emulator.stop()
