"""The server fixtures every integration suite relies on start real servers."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

pytestmark = pytest.mark.services


def test_redis_fixture_starts_a_server_that_answers_ping(redis_server):
    with socket.create_connection((redis_server.host, redis_server.port), timeout=2) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(64) == b"+PONG\r\n"


def test_etcd_fixture_starts_a_server_that_stores_a_key(etcd_server):
    # etcd v3's JSON gateway: keys and values are base64 ("a2V5" is "key").
    base = f"http://{etcd_server.url}/v3/kv"

    def post(path: str, body: dict[str, str]) -> dict[str, object]:
        req = urllib.request.Request(
            f"{base}/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    post("put", {"key": "a2V5", "value": "dmFsdWU="})
    got = post("range", {"key": "a2V5"})
    kvs = got["kvs"]
    assert isinstance(kvs, list)
    assert kvs[0]["value"] == "dmFsdWU="
