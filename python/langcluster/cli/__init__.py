"""The command line: `python -m langcluster demo` runs the main demo,
`python -m langcluster bench` a short benchmark against the floor and the
peers."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m langcluster",
        description="demo: an LLM service on simulated model servers, with chaos and a live "
        "view; bench: ns per call of the hot paths against the floor and the peers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    demo = commands.add_parser(
        "demo", help="simulated model servers, chaos, a live view", formatter_class=defaults,
        description="An LLM service on loopback: simulated OpenAI-compatible servers with "
        "prefix caches, worker processes calling them through the OpenAI SDK on the cluster "
        "transport, one server killed and another slowed midway. Needs the extra "
        "langcluster[demo]; --redis needs langcluster[redis], --etcd a running etcd.",
    )  # fmt: skip
    demo.add_argument("--duration", type=float, default=12.0, help="seconds of workload")
    demo.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    demo.add_argument("--no-live", action="store_true", help="plain logs instead of a live view")
    demo.add_argument("--redis", metavar="URL", help="the workers share state through this Redis")
    demo.add_argument("--workers", type=int, default=3, help="worker processes (1 to 16)")
    demo.add_argument("--etcd", metavar="URL", help="discover the servers through this etcd")
    demo.add_argument("--seed", type=int, default=7, help="seed of the workload and the chaos")
    demo.add_argument(
        "--stall-s", type=float, metavar="S",
        help="block worker 0's event loop for S seconds midway (a soak test of recovery)",
    )  # fmt: skip
    demo.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on 127.0.0.1:N"
    )
    bench = commands.add_parser(
        "bench", help="ns per call against the floor and the peers", formatter_class=defaults,
        description="ns per call of the hot paths against the floor and the peers; the peers "
        "come with the extra langcluster[bench].",
    )  # fmt: skip
    bench.add_argument("--number", type=int, default=100_000, help="calls per measurement")
    bench.add_argument("--repeat", type=int, default=5, help="measurements (the best counts)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not 1 <= args.duration <= 3600:
            parser.error("--duration: must be between 1 and 3600 seconds")
        if not 1 <= args.workers <= 16:
            parser.error("--workers: must be between 1 and 16")
        if args.stall_s is not None and not 0 < args.stall_s <= 300:
            parser.error("--stall-s: must be above 0 and at most 300 seconds")
        if args.metrics_port is not None:
            if not 0 <= args.metrics_port <= 65535:
                parser.error("--metrics-port: must be a port number, 0 to 65535")
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                parser.error("--metrics-port: needs pip install 'langcluster[prometheus]'")
        if args.redis is not None:
            try:
                import redis  # noqa: F401
            except ImportError:
                parser.error("--redis: needs pip install 'langcluster[redis]'")
        from langcluster.cli.demo import cli

        return cli(args)
    from langcluster.cli.bench import cli as bench_cli

    return bench_cli(args)
