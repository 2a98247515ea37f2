"""Router processes sharing their prefix index through Redis: the servers'
token hit rate with 1, 4 and 8 PrefixAware routers in front of four
simulated servers, each request dealt to a router at random, with the
routers sharing (SharedState) and not sharing.

    python benches/shared_prefix.py [--routers 1 4 8]

Starts a throwaway redis-server (Debian's must be installed). The workload
is SGLang's shared-prefix shape from the simulator: 64 groups of 8 prompts,
a 1,024-token system prompt per group and 128-token questions, at 80
prompts a second; each server caches 1,536 blocks of 16 tokens (the groups'
prompts fit once in the four caches, not once per router).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langcluster.testing.workloads import SharedPrefix
from tests.support import routers
from tests.support.servers import free_port, redis_command, require_binary, running

SERVERS = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    shape = SharedPrefix(
        rate=80.0, groups=64, prompts_per_group=8, system_tokens=1024, question_tokens=128, seed=3
    )
    requests = [(r.arrival_s, r.blocks) for r in shape.arrivals()]
    binary = require_binary("redis-server", "redis-server")
    port = free_port()
    options = {"cache_blocks": 1536}
    with (
        tempfile.TemporaryDirectory() as workdir,
        running(redis_command(binary, port, workdir), port),
    ):
        url = f"redis://127.0.0.1:{port}/0"
        one, _ = routers.replay(requests, 1, None, servers=SERVERS, **options)
        print(f"{len(requests)} prompts; one router: token hit rate {one:.3f}")
        print("routers | sharing | ratio to one | not sharing | ratio to one")
        for n in args.routers:
            if n == 1:
                continue
            shared, _ = routers.replay(requests, n, url, servers=SERVERS, **options)
            alone, _ = routers.replay(requests, n, None, servers=SERVERS, **options)
            ratios = f"{shared / one:12.2f} | {alone:11.3f} | {alone / one:.2f}"
            print(f"{n:7} | {shared:7.3f} | {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
