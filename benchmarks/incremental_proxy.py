"""A loopback shaper that counts bytes: benchmarks/proxy.py's latency and bandwidth shaping, plus the bytes it
forwards each way and the requests by method, kept in a JSON file.

    python -m benchmarks.incremental_proxy --upstream 127.0.0.1:9000 --counts counts.json
        [--latency-ms 20,50] [--bandwidth-mbs 25] [--log requests.log]

``up`` counts request heads and bodies (what the server received), ``down``
the responses; the file is rewritten at most every 20 ms when they change.
:func:`counting_target` starts ``s3-lat`` (moto) or ``gcs`` (fake-gcs-server)
behind it, as benchmarks/targets.py does behind benchmarks/proxy.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.targets import ShapingProxy


def read_counts(path: str | None) -> dict[str, int] | None:
    """The counting proxy's tallies so far (bytes ``up``/``down``, ``requests``, ``req_<METHOD>``)."""
    if not path:
        return None
    try:
        with open(path) as f:
            return {k: int(v) for k, v in json.load(f).items()}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def counts_between(a: dict[str, int] | None, b: dict[str, int] | None) -> dict[str, int] | None:
    if a is None or b is None:
        return None
    return {k: b.get(k, 0) - a.get(k, 0) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


def settled_counts(path: str | None) -> dict[str, int] | None:
    """The tallies once the proxy has written its last change (it writes every 20 ms)."""
    if not path:
        return None
    time.sleep(0.08)
    last = read_counts(path)
    for _ in range(20):
        time.sleep(0.03)
        now = read_counts(path)
        if now == last:
            return now
        last = now
    return last


def serve_proxy(argv: list[str]) -> None:
    """benchmarks/proxy.py's shaper (latency per request, bandwidth per connection and direction) that also
    counts the bytes it forwards each way and the requests by method, into a JSON file (``--counts``)."""
    import asyncio
    import contextlib

    from benchmarks import proxy as P

    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--latency-ms", default="0")
    p.add_argument("--bandwidth-mbs", type=float, default=0.0)
    p.add_argument("--log", default=None)
    p.add_argument("--counts", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tally: Counter[str] = Counter()

    class CountingShaper(P.Shaper):
        def record(self, method: str, path: str) -> None:
            tally["requests"] += 1
            tally["req_" + method] += 1
            super().record(method, path)

    class Counting(P.Throttle):
        def __init__(self, rate: float | None, key: str) -> None:
            super().__init__(rate)
            self.key = key

        async def take(self, n: int) -> None:
            tally[self.key] += n
            await super().take(n)

    async def handle(shaper: P.Shaper, upstream: tuple[str, int], cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*upstream)
        except OSError:
            cw.close()
            return
        up = asyncio.create_task(P._requests(shaper, cr, uw, Counting(shaper.bandwidth, "up")))
        down = asyncio.create_task(P._responses(ur, cw, Counting(shaper.bandwidth, "down")))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            for w in (uw, cw):
                with contextlib.suppress(Exception):
                    w.close()

    async def dump() -> None:
        last: dict[str, int] = {}
        while True:
            await asyncio.sleep(0.02)
            snap = dict(tally)
            if snap != last:
                tmp = args.counts + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(snap, f)
                os.replace(tmp, args.counts)
                last = snap

    async def serve() -> None:
        host, port = args.upstream.rsplit(":", 1)
        lo, _, hi = args.latency_ms.partition(",")
        shaper = CountingShaper((float(lo) / 1000, float(hi or lo) / 1000),
                                args.bandwidth_mbs * 1e6 if args.bandwidth_mbs else None, args.seed, args.log)
        server = await asyncio.start_server(lambda r, w: handle(shaper, (host, int(port)), r, w), "127.0.0.1", 0,
                                            limit=1 << 20)
        task = asyncio.create_task(dump())
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()
        task.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


class CountingProxy(ShapingProxy):
    """A :func:`serve_proxy` subprocess in front of ``upstream`` (host:port); ``counts`` is the file of its tallies."""

    module = "benchmarks.incremental_proxy"

    def __init__(self, upstream: str, latency_ms: str, bandwidth_mbs: float, log: Path, seed: int = 0) -> None:
        self.counts = str(log.with_name("proxy-counts.json"))
        super().__init__(upstream, latency_ms, bandwidth_mbs, log, seed, extra=("--counts", self.counts))


def counting_target(name: str, latency_ms: str = "20,50", bandwidth_mbs: float = 25.0) -> Any:
    """``s3-lat`` (moto behind the shaping proxy) or ``gcs`` (fake-gcs-server behind an unshaped one), both
    proxies counting bytes: the target's ``counts`` is the path of the proxy's tallies."""
    from benchmarks import targets as T

    class Counting:
        proxy_class: type[ShapingProxy] = CountingProxy

        @property
        def counts(self) -> str | None:
            proxy = getattr(self, "proxy", None)
            return proxy.counts if isinstance(proxy, CountingProxy) else None

    if name == "s3-lat":
        class CountingS3(Counting, T.S3Target):
            pass

        return CountingS3(shaped=True, latency_ms=latency_ms, bandwidth_mbs=bandwidth_mbs)
    if name == "gcs":
        class CountingGCS(Counting, T.GCSTarget):
            pass

        return CountingGCS()
    raise ValueError(name)


if __name__ == "__main__":
    serve_proxy(sys.argv[1:])
