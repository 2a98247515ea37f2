"""A Consul HTTP API emulator for the tests: the part of the agent API that
service discovery uses, with Consul's documented behaviour.

- ``PUT /v1/agent/service/register`` (field names in any case, as Consul
  accepts them), ``PUT /v1/agent/service/deregister/<id>``.
- Checks: TTL (``PUT /v1/agent/check/pass|warn|fail/<check-id>``,
  ``PUT /v1/agent/check/update/<check-id>``), HTTP and TCP (run by the
  emulator every ``Interval``, with ``Timeout``). A check starts critical
  unless its definition sets ``Status``. A TTL check not updated within its
  TTL turns critical. HTTP and TCP results go through the state machine of
  ``SuccessBeforePassing`` and ``FailuresBeforeCritical`` (consecutive
  results needed before a change). A service whose check has been critical
  for longer than ``DeregisterCriticalServiceAfter`` is deregistered.
  Check ids: ``service:<id>``, or ``service:<id>:<n>`` with several checks.
- ``GET /v1/health/service/<name>`` with ``passing`` (only entries whose
  every check passes), ``index`` and ``wait``: the index is the Raft-like
  modification index of the data, increasing by one per change and
  returned in ``X-Consul-Index``; a query whose ``index`` is not below the
  current one blocks until the data changes or ``wait`` (default 5 min)
  plus up to ``wait / 16`` of jitter passes.
- ``GET /v1/catalog/services``, ``GET /v1/status/leader``.

It runs in threads (one per request, as blocking queries need), and its
timers tick every 20 ms, so TTLs and the reaper act within that.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: object) -> float:
    """A Go duration string ("10s", "1m", "500ms") in seconds."""
    if isinstance(text, int | float):
        return float(text) / 1e9  # Consul takes bare numbers as nanoseconds
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def lower_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k.lower(): (v if k.lower() == "meta" else lower_keys(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [lower_keys(v) for v in obj]
    return obj


@dataclass
class Check:
    id: str
    service_id: str
    kind: str  # "ttl" | "http" | "tcp"
    status: str = "critical"
    output: str = ""
    ttl_s: float = 0.0
    target: str = ""
    interval_s: float = 10.0
    timeout_s: float = 10.0
    deregister_after_s: float | None = None
    success_before_passing: int = 0
    failures_before_critical: int = 0
    deadline: float = 0.0  # TTL expiry or next run
    critical_since: float | None = None
    successes: int = 0
    failures: int = 0


@dataclass
class Service:
    id: str
    name: str
    address: str
    port: int
    meta: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    checks: list[str] = field(default_factory=list)


class ConsulEmulator:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.index = 1
        self.changed = threading.Condition()
        self.requests = 0
        self.connections: set[socket.socket] = set()
        self._stop = threading.Event()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Go's HTTP server (Consul's) sends without Nagle's delay; so do we,
            # or every small response would wait 40 ms for a delayed ACK.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                emulator.connections.add(self.connection)

            def finish(self) -> None:
                emulator.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: object, index: int | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if index is not None:
                    self.send_header("X-Consul-Index", str(index))
                    self.send_header("X-Consul-KnownLeader", "true")
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else None

            def do_GET(self) -> None:
                emulator.requests += 1
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                status, body, index = emulator.get(url.path, query)
                self._reply(status, body, index)

            def do_PUT(self) -> None:
                emulator.requests += 1
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                status, body = emulator.put(url.path, query, self._body())
                self._reply(status, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._tick, daemon=True),
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConsulEmulator:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stops as a killed agent does: open connections are cut too, not
        left to serve the clients' keep-alive requests."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        with self.changed:
            self.changed.notify_all()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    # ----------------------------------------------------------- the state

    def _bump(self) -> None:
        """Called with `changed` held, after every change of the data."""
        self.index += 1
        self.changed.notify_all()

    def _set_status(self, check: Check, status: str, output: str = "") -> None:
        now = time.monotonic()
        if status == "critical" and check.critical_since is None:
            check.critical_since = now
        elif status != "critical":
            check.critical_since = None
        if check.status != status or check.output != output:
            check.status, check.output = status, output
            self._bump()

    def register(self, body: dict[str, Any]) -> None:
        b = lower_keys(body)
        name = b["name"]
        service_id = b.get("id") or name
        port = int(b.get("port") or 0)
        weights = b.get("weights") or {}
        service = Service(
            service_id, name, b.get("address") or "127.0.0.1", port,
            meta={str(k): str(v) for k, v in (b.get("meta") or {}).items()},
            tags=list(b.get("tags") or []),
            weights={
                "Passing": int(weights.get("passing", 1)),
                "Warning": int(weights.get("warning", 1)),
            },
        )  # fmt: skip
        definitions = ([b["check"]] if b.get("check") else []) + list(b.get("checks") or [])
        with self.changed:
            self._deregister(service_id, bump=False)
            now = time.monotonic()
            for i, d in enumerate(definitions):
                check_id = (
                    d.get("checkid")
                    or d.get("id")
                    or (f"service:{service_id}" + (f":{i + 1}" if len(definitions) > 1 else ""))
                )
                if d.get("ttl"):
                    kind, target = "ttl", ""
                elif d.get("http"):
                    kind, target = "http", d["http"]
                elif d.get("tcp"):
                    kind, target = "tcp", d["tcp"]
                else:
                    raise ValueError(f"unsupported check definition {d}")
                check = Check(
                    check_id, service_id, kind,
                    status=d.get("status") or "critical",
                    ttl_s=duration(d["ttl"]) if kind == "ttl" else 0.0,
                    target=target,
                    interval_s=duration(d.get("interval", "10s")) if kind != "ttl" else 0.0,
                    timeout_s=duration(d.get("timeout", "10s")) if kind != "ttl" else 0.0,
                    deregister_after_s=(
                        duration(d["deregistercriticalserviceafter"])
                        if d.get("deregistercriticalserviceafter") else None
                    ),
                    success_before_passing=int(d.get("successbeforepassing") or 0),
                    failures_before_critical=int(d.get("failuresbeforecritical") or 0),
                )  # fmt: skip
                check.deadline = now + (check.ttl_s if kind == "ttl" else 0.0)
                if check.status == "critical":
                    check.critical_since = now
                self.checks[check_id] = check
                service.checks.append(check_id)
            self.services[service_id] = service
            self._bump()

    def _deregister(self, service_id: str, bump: bool = True) -> bool:
        service = self.services.pop(service_id, None)
        if service is None:
            return False
        for check_id in service.checks:
            self.checks.pop(check_id, None)
        if bump:
            self._bump()
        return True

    def entries(self, name: str, passing: bool) -> list[dict[str, Any]]:
        out = []
        for s in self.services.values():
            if s.name != name:
                continue
            checks = [self.checks[c] for c in s.checks if c in self.checks]
            if passing and any(c.status != "passing" for c in checks):
                continue
            out.append(
                {
                    "Node": {"ID": "emulator", "Node": "emulator", "Address": "127.0.0.1",
                             "Datacenter": "dc1", "Meta": {}},
                    "Service": {"ID": s.id, "Service": s.name, "Tags": s.tags,
                                "Address": s.address, "Port": s.port, "Meta": s.meta,
                                "Weights": s.weights},
                    "Checks": [
                        {"Node": "emulator", "CheckID": "serfHealth",
                         "Name": "Serf Health Status", "Status": "passing", "Output": "",
                         "ServiceID": "", "ServiceName": ""},
                    ] + [
                        {"Node": "emulator", "CheckID": c.id, "Name": f"Service '{s.name}' check",
                         "Status": c.status, "Output": c.output, "ServiceID": s.id,
                         "ServiceName": s.name, "Type": c.kind}
                        for c in checks
                    ],
                }
            )  # fmt: skip
        return out

    # ------------------------------------------------------------- routes

    def get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, int | None]:
        if path == "/v1/status/leader":
            return 200, "127.0.0.1:8300", None
        if path == "/v1/catalog/services":
            with self.changed:
                names: dict[str, list[str]] = {}
                for s in self.services.values():
                    names.setdefault(s.name, []).extend(s.tags)
                return 200, names, self.index
        m = re.fullmatch(r"/v1/health/service/([^/]+)", path)
        if not m:
            return 404, f"no route for {path}", None
        name = urllib.parse.unquote(m.group(1))
        passing = "passing" in query and query["passing"][0].lower() not in ("0", "false")
        wanted = int(query.get("index", ["0"])[0] or 0)
        wait = min(duration(query["wait"][0]), 600.0) if "wait" in query else 300.0
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        with self.changed:
            while wanted and self.index <= wanted and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return 200, self.entries(name, passing), self.index

    def put(self, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "/v1/agent/service/register":
            try:
                self.register(body)
            except (KeyError, ValueError, TypeError) as error:
                return 400, f"Invalid service definition: {error}"
            return 200, None
        m = re.fullmatch(r"/v1/agent/service/deregister/([^/]+)", path)
        if m:
            with self.changed:
                found = self._deregister(urllib.parse.unquote(m.group(1)))
            return (200, None) if found else (404, "Unknown service ID")
        m = re.fullmatch(r"/v1/agent/check/(pass|warn|fail|update)/(.+)", path)
        if m:
            verb, check_id = m.group(1), urllib.parse.unquote(m.group(2))
            with self.changed:
                check = self.checks.get(check_id)
                if check is None or check.kind != "ttl":
                    return 500, f'CheckID "{check_id}" does not have associated TTL'
                if verb == "update":
                    status = {"passing": "passing", "warning": "warning"}.get(
                        (body or {}).get("Status", "critical"), "critical"
                    )
                    note = (body or {}).get("Output", "")
                else:
                    status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
                    note = query.get("note", [""])[0]
                check.deadline = time.monotonic() + check.ttl_s
                self._set_status(check, status, note)
            return 200, None
        return 404, f"no route for {path}"

    # -------------------------------------------------------------- timers

    def _probe(self, check: Check) -> bool:
        try:
            if check.kind == "http":
                with urllib.request.urlopen(check.target, timeout=check.timeout_s) as r:
                    return 200 <= r.status < 300
            host, _, port = check.target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=check.timeout_s):
                return True
        except (OSError, ValueError):
            return False

    def _tick(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            with self.changed:
                due = [c for c in self.checks.values() if c.kind != "ttl" and c.deadline <= now]
                for c in self.checks.values():
                    if c.kind == "ttl" and c.deadline <= now and c.status != "critical":
                        self._set_status(c, "critical", "TTL expired")
                for c in due:
                    c.deadline = now + c.interval_s
            for c in due:  # probes run outside the lock
                ok = self._probe(c)
                with self.changed:
                    if ok:
                        c.successes, c.failures = c.successes + 1, 0
                        if c.successes >= max(1, c.success_before_passing) or c.status == "passing":
                            self._set_status(c, "passing", "ok")
                    else:
                        c.failures, c.successes = c.failures + 1, 0
                        if (
                            c.failures >= max(1, c.failures_before_critical)
                            or c.status == "critical"
                        ):
                            self._set_status(c, "critical", "probe failed")
            with self.changed:
                for c in list(self.checks.values()):
                    if (
                        c.deregister_after_s is not None
                        and c.critical_since is not None
                        and now - c.critical_since > c.deregister_after_s
                    ):
                        self._deregister(c.service_id)
