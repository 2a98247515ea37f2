"""What ``python -m langcluster demo`` counts and shows: the results the
workers send back, their views of the cluster, the live table, the summary."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 2.0  # the live view's figures are over the last two seconds
MEMORY_EVERY_S = 5.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Run:
    """What the demo's front counts as it goes."""

    workers: int
    sharing: bool
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    per_node: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # Per node: (time, TTFT s, prompt tokens, cached tokens) of recent answers.
    recent: dict[str, deque[tuple[float, float, int, int]]] = field(default_factory=dict)
    views: dict[int, dict[str, Any]] = field(default_factory=dict)  # each worker's last
    log: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    failures: list[str] = field(default_factory=list)  # workers that could not start
    unfinished: list[int] = field(default_factory=list)  # workers that did not end in time
    # Each worker's memory, every MEMORY_EVERY_S: (seconds into the run, MB).
    memory: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    # Worker 0's answers' latency as the front sees it (from dealing the
    # request to its answer), by second of the run: what a stall did.
    by_second: dict[int, list[float]] = field(default_factory=dict)
    stalled: tuple[float, float] | None = None  # when worker 0's loop was blocked, how long

    def sample(self, worker: int, view: dict[str, Any]) -> None:
        """Keeps a worker's memory now and then."""
        at = time.monotonic() - self.started
        trace = self.memory.setdefault(worker, [])
        if view.get("rss_mb") and (not trace or at - trace[-1][0] >= MEMORY_EVERY_S):
            trace.append((round(at, 1), float(view["rss_mb"])))

    def answered(self, worker: int, dealt_s: float) -> None:
        """Worker ``worker`` answered a request dealt ``dealt_s`` seconds
        into the run."""
        if worker == 0:
            now = time.monotonic() - self.started
            self.by_second.setdefault(int(now), []).append(now - dealt_s)

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:5.1f}s  {text}")

    def record(self, result: dict[str, Any]) -> None:
        if not result.get("ok"):
            self.failed += 1
            error = str(result.get("error", "no answer"))
            self.errors[error] += 1
            self.note(f"[red]request failed[/]: {error}")
            return
        self.ok += 1
        node = str(result.get("node"))
        prompt, cached = int(result.get("prompt_tokens", 0)), int(result.get("cached_tokens", 0))
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.ttfts.append(result["ttft_s"])
        self.per_node[node] += 1
        now = time.monotonic()
        window = self.recent.setdefault(node, deque())
        window.append((now, result["ttft_s"], prompt, cached))
        while window and window[0][0] < now - WINDOW_S:
            window.popleft()

    def node_figures(self, node: str) -> tuple[int, float, float, float]:
        """Answers, cached-token rate, TTFT p50 and p99 (s), over the window."""
        now = time.monotonic()
        window = [r for r in self.recent.get(node, ()) if r[0] >= now - WINDOW_S]
        prompt = sum(r[2] for r in window)
        rate = sum(r[3] for r in window) / prompt if prompt else 0.0
        ttfts = [r[1] for r in window]
        return len(window), rate, percentile(ttfts, 0.5), percentile(ttfts, 0.99)

    def states(self, node: str) -> tuple[str, str]:
        """Health and breaker of ``node`` across the workers: the state if
        they agree, else each state with how many workers hold it."""

        def agreed(values: list[str]) -> str:
            counts = Counter(values)
            if len(counts) == 1:
                return values[0]
            return " ".join(f"{v} {n}/{len(values)}" for v, n in counts.most_common())

        seen = [v["nodes"][node] for v in self.views.values() if node in v["nodes"]]
        if not seen:
            return "-", "-"
        return agreed([s[0] for s in seen]), agreed([s[1] for s in seen])

    def nodes(self) -> list[str]:
        found = {n for v in self.views.values() for n in v["nodes"]}
        return sorted(found | set(self.per_node))

    def events(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for v in self.views.values():
            total.update(v["events"])
        return total

    def shared(self) -> dict[str, int]:
        """The workers' shared-state counters, summed."""
        total: Counter[str] = Counter()
        for v in self.views.values():
            for key, value in (v.get("shared") or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[key] += value
        return dict(total)

    def sharing_line(self) -> str:
        if not self.sharing:
            return f"{self.workers} workers, sharing nothing (embedded mode: no Redis)"
        s = self.shared()
        return (
            f"{self.workers} workers sharing through Redis: {s.get('applied', 0)} messages "
            f"applied, {s.get('routes_merged', 0)} picks merged, "
            f"{s.get('health_leases', 0)} health lease(s) taken"
        )

    def progress(self) -> str:
        parts = []
        for node in self.nodes():
            answers, rate, _, _ = self.node_figures(node)
            health, breaker = self.states(node)
            parts.append(f"{node}:{answers}/{rate:.0%}/{health[:4]}/{breaker[:4]}")
        flight = self.requests - self.ok - self.failed
        head = f"{time.monotonic() - self.started:5.1f}s  requests {self.requests} "
        head += f"(ok {self.ok}, failed {self.failed}, in flight {flight})  last {WINDOW_S:g} s: "
        return head + "  ".join(parts)


def render(run: Run, title: str) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    table = Table(
        title=title, expand=True,
        caption=f"per node: answers of the last {WINDOW_S:g} s; below: the whole run",
    )  # fmt: skip
    for column in ("node", "answers", "cached tokens", "TTFT p50 ms", "TTFT p99 ms",
                   "health", "breaker"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("node", "health") else "right")
    colors = {"healthy": "green", "unhealthy": "red", "unknown": "yellow", "draining": "yellow"}
    breaker_colors = {"closed": "green", "open": "red", "half_open": "yellow"}
    for node in run.nodes():
        answers, rate, p50, p99 = run.node_figures(node)
        health, breaker = run.states(node)
        table.add_row(
            node, str(answers), f"{rate:.0%}", f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}",
            f"[{colors.get(health, 'white')}]{health}[/]",
            f"[{breaker_colors.get(breaker, 'white')}]{breaker}[/]",
        )  # fmt: skip
    rate = run.cached_tokens / run.prompt_tokens if run.prompt_tokens else 0.0
    events = run.events()
    line = (
        f"requests {run.requests}   ok {run.ok}   failed {run.failed}   "
        f"in flight {run.requests - run.ok - run.failed}   "
        f"cached tokens {rate:.1%}   TTFT p50 {percentile(run.ttfts, 0.5) * 1000:.0f} ms "
        f"p99 {percentile(run.ttfts, 0.99) * 1000:.0f} ms   retries {events['retry']}   "
        f"breaker opens {events['breaker_opened']}\n{run.sharing_line()}"
    )
    return Group(table, Panel(line), Panel("\n".join(run.log) or "-", title="events"))


def summary(run: Run, elapsed: float, simulated: dict[str, Any]) -> dict[str, Any]:
    events = run.events()
    done = run.ok + run.failed + run.lost
    return {
        "duration_s": round(elapsed, 2),
        "workers": run.workers,
        "sharing": "redis" if run.sharing else "none",
        "requests": run.requests,
        "success_rate": round(run.ok / done, 4) if done else 0.0,
        "failed": run.failed + run.lost,
        "no_answer": run.lost,  # of the failed: dealt, never answered by the end
        "errors": dict(run.errors),
        "token_hit_rate": round(run.cached_tokens / run.prompt_tokens, 3)
        if run.prompt_tokens
        else 0.0,
        "ttft_p50_ms": round(percentile(run.ttfts, 0.50) * 1000, 1),
        "ttft_p99_ms": round(percentile(run.ttfts, 0.99) * 1000, 1),
        "retries": events["retry"],
        "breaker_opens": events["breaker_opened"],
        "health_flips": events["status_changed"],
        "busy": events["node_busy"],
        "per_node": dict(sorted(run.per_node.items())),
        "breakers_at_end": {n: run.states(n)[1] for n in run.nodes()},
        "shared": run.shared() if run.sharing else None,
        "unfinished_workers": run.unfinished,
        "memory_mb": memory(run),
        "stall": stall(run),
        "simulator": simulated,
    }


def memory(run: Run) -> dict[int, dict[str, float]]:
    """Each worker's memory after the first tenth of the run (warm), at its
    highest, and last."""
    out = {}
    for worker, trace in sorted(run.memory.items()):
        if not trace:
            continue
        warm = trace[len(trace) // 10]
        out[worker] = {"warm": warm[1], "max": max(mb for _, mb in trace), "end": trace[-1][1]}
    return out


def stall(run: Run) -> dict[str, Any] | None:
    """When the front blocked worker 0's loop: its answers' latency p50 (as
    the front sees it) over the minute before, and how long after the loop
    ran again until a second's p50 was back within twice that."""
    if run.stalled is None:
        return None
    at, length = run.stalled
    before = [t for s, ts in run.by_second.items() if at - 60 <= s < at for t in ts]
    normal = percentile(before, 0.5)
    again = at + length
    back = next(
        (s + 1 - again for s in sorted(run.by_second) if s >= again
         and percentile(run.by_second[s], 0.5) <= 2 * normal),
        None,
    )  # fmt: skip
    return {
        "at_s": round(at, 1), "stall_s": length, "latency_p50_before_ms": round(normal * 1000, 1),
        "back_after_s": None if back is None else round(back, 1),
    }  # fmt: skip


def report(result: dict[str, Any]) -> str:
    sim = result["simulator"]

    def line(name: str, figures: dict[str, Any]) -> str:
        return (
            f"  {name:<28} cached tokens {figures['token_hit_rate']:.1%}, "
            f"TTFT p50 {figures['ttft_p50_ms']} ms, p99 {figures['ttft_p99_ms']} ms"
        )

    shared = result["shared"]
    sharing = (
        f"  shared state    {shared.get('applied', 0)} messages applied, "
        f"{shared.get('routes_merged', 0)} picks merged, "
        f"{shared.get('redis_errors', 0)} Redis errors"
        if shared is not None
        else "  shared state    none (embedded mode; --redis URL shares it)"
    )
    return "\n".join([
        "",
        "summary",
        f"  requests        {result['requests']} in {result['duration_s']} s, "
        f"over {result['workers']} worker processes",
        f"  success rate    {result['success_rate']:.2%} ({result['failed']} failed"
        + (f", {result['no_answer']} of them never answered" if result["no_answer"] else "")
        + ")",
        f"  failover        {result['retries']} retries, {result['breaker_opens']} breaker "
        f"openings, {result['health_flips']} health changes (over all workers)",
        "  per node        " + ", ".join(f"{n} {c}" for n, c in result["per_node"].items()),
        "  breakers at end " + ", ".join(f"{n} {b}" for n, b in result["breakers_at_end"].items()),
        sharing,
        *([f"  not ended       worker(s) {result['unfinished_workers']} did not end within 30 s"]
          if result["unfinished_workers"] else []),
        *(["  memory (MB)     " + ", ".join(
            f"worker {w}: {m['warm']:.0f} warm, {m['max']:.0f} max, {m['end']:.0f} at the end"
            for w, m in result["memory_mb"].items())] if result["memory_mb"] else []),
        *([f"  stall           worker 0's loop blocked {result['stall']['stall_s']:g} s at "
           f"{result['stall']['at_s']} s; its answers' latency p50 back within twice its "
           f"{result['stall']['latency_p50_before_ms']} ms {result['stall']['back_after_s']} s "
           "after it ran again"] if result["stall"] else []),
        "the same workload (and gpu-1's outage):",
        line("this run (PrefixAware)", {
            k: result[k] for k in ("token_hit_rate", "ttft_p50_ms", "ttft_p99_ms")}),
        line("simulator, round robin", sim["round_robin"]),
        line("simulator, one PrefixAware", sim["prefix_aware"]),
    ])  # fmt: skip
