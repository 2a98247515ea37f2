"""python -m langcluster demo and bench, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.helpers import wait_until


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langcluster", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_demo_runs_and_reports_in_json() -> None:
    done = run_module("demo", "--json", "--duration", "6")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] > 200
    assert result["workers"] == 3
    assert result["success_rate"] >= 0.97  # streams cut by the killed server fail
    assert 0 <= result["no_answer"] <= result["failed"]
    assert result["breaker_opens"] + result["health_flips"] >= 1  # the chaos was seen
    assert set(result["per_node"]) <= {f"gpu-{i}" for i in range(5)}
    assert len(result["per_node"]) >= 4
    assert (result["sharing"], result["shared"]) == ("none", None)
    assert 0 < result["token_hit_rate"] < 1
    sim = result["simulator"]
    # Prefix-aware routing beats round robin on the cache, in the simulator.
    assert sim["round_robin"]["token_hit_rate"] < sim["prefix_aware"]["token_hit_rate"]


def test_a_worker_whose_loop_stalls_catches_up_and_its_memory_is_reported() -> None:
    done = run_module("demo", "--json", "--duration", "6", "--workers", "2", "--stall-s", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["unfinished_workers"] == []
    assert set(result["memory_mb"]) == {"0", "1"}
    assert all(m["warm"] > 0 and m["max"] >= m["end"] for m in result["memory_mb"].values())
    stall = result["stall"]
    assert (stall["at_s"] > 0, stall["stall_s"]) == (True, 1.0)
    assert stall["back_after_s"] is not None, "its answers came back to their usual latency"


def test_the_demo_in_plain_logs() -> None:
    done = run_module("demo", "--no-live", "--duration", "4", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "embedded mode: the workers share nothing" in done.stdout
    assert "chaos: gpu-1 is killed" in done.stdout
    assert "answer 500 to a few requests on purpose" in done.stdout
    assert "in flight" in done.stdout
    assert "last 2 s:" in done.stdout
    assert "success rate" in done.stdout
    assert "simulator, round robin" in done.stdout


@pytest.mark.services
def test_the_demo_on_real_redis_and_etcd(redis_server: Any, etcd_server: Any) -> None:
    done = run_module(
        "demo", "--json", "--duration", "4",
        "--redis", f"redis://{redis_server.url}/0", "--etcd", f"http://{etcd_server.url}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["success_rate"] >= 0.97
    assert result["sharing"] == "redis"
    assert result["shared"]["routes_merged"] > 0  # the workers merged each other's picks
    # Found through etcd: the nodes the workers' clusters know (in 4 s the
    # prefix-aware workers may not have needed all of them yet).
    assert len(result["breakers_at_end"]) >= 4
    assert set(result["per_node"]) <= set(result["breakers_at_end"])


def test_a_bad_worker_count_is_refused_by_name() -> None:
    done = run_module("demo", "--workers", "0")
    assert done.returncode == 2
    assert "--workers: must be between 1 and 16" in done.stderr
    done = run_module("demo", "--stall-s", "0")
    assert done.returncode == 2
    assert "--stall-s: must be above 0" in done.stderr


def test_the_bench_command_prints_ratios() -> None:
    done = run_module("bench", "--number", "2000", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    for row in ("floor: next(itertools.cycle)", "langcluster RoundRobin",
                "pure Python round robin", "cachebox", "pybreaker"):  # fmt: skip
        assert row in done.stdout
    assert "x first row" in done.stdout


def test_the_demo_serves_prometheus_metrics_while_it_runs() -> None:
    import socket

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}

    def scraped_a_call(port: int) -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False  # not serving yet
        scraped = {f.name: f for f in text_string_to_metric_families(text)}
        calls = scraped.get("langcluster_calls")
        if calls is None or sum(s.value for s in calls.samples) == 0:
            return False
        families.update(scraped)  # calls have been made and counted
        return True

    # The port is free when chosen, but the demo's own simulated servers bind
    # ephemeral ports first and may be given that very one: then the demo
    # exits at once saying so, and the run is repeated on another port.
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        demo = subprocess.Popen(
            [sys.executable, "-m", "langcluster", "demo", "--json", "--duration", "4",
             "--metrics-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_until(lambda p=port, d=demo: scraped_a_call(p) or d.poll() is not None, 30)
            stdout, stderr = demo.communicate(timeout=60)
        finally:
            demo.kill()
        if families or "Address already in use" not in stderr:
            break
    assert demo.returncode == 0, stderr
    assert families, "no scrape showed a call"
    nodes = {s.labels["node"] for s in families["langcluster_node_in_flight"].samples}
    assert nodes == {f"gpu-{i}" for i in range(5)}
    assert json.loads(stdout)["requests"] > 0


def test_a_bad_metrics_port_is_refused_by_name() -> None:
    done = run_module("demo", "--metrics-port", "70000")
    assert done.returncode == 2
    assert "--metrics-port: must be a port number" in done.stderr
