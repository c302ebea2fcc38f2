"""A network shaper on loopback: an asyncio TCP proxy in front of an HTTP server.

    python -m benchmarks.proxy --upstream 127.0.0.1:9000 [--port 0]
        [--latency-ms 20,50] [--bandwidth-mbs 25] [--log requests.log] [--seed 0] [--counts counts.json]

For every HTTP request on a client connection it waits a per-request latency
(uniform in the given range, seeded) before forwarding the request head —
one round trip as a real bucket costs it — and it caps the bytes per second
of each connection in each direction (a token bucket per connection and
direction). Bodies are forwarded as they arrive (Content-Length or chunked),
so ``Expect: 100-continue`` and keep-alive work. Each request is appended to
``--log`` as ``METHOD PATH`` (the benchmark counts requests there). With
``--counts``, the bytes it forwards each way (``up``: request heads and
bodies, what the server received; ``down``: the responses) and the requests
by method (``requests``, ``req_<METHOD>``) are kept in that JSON file,
rewritten at most every 20 ms when they change.

Prints ``READY <port>`` on stdout once listening. Runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter

CHUNK = 64 * 1024


class Shaper:
    def __init__(self, latency: tuple[float, float], bandwidth: float | None, seed: int, log_path: str | None) -> None:
        self.latency = latency
        self.bandwidth = bandwidth  # bytes/s per connection and direction, None = unlimited
        self.rng = random.Random(seed)
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.requests = 0
        self.tally: Counter[str] = Counter()  # bytes "up"/"down", "requests", "req_<METHOD>"

    def delay(self) -> float:
        lo, hi = self.latency
        return self.rng.uniform(lo, hi) if hi > 0 else 0.0

    def record(self, method: str, path: str) -> None:
        self.requests += 1
        self.tally["requests"] += 1
        self.tally["req_" + method] += 1
        if self.log is not None:
            self.log.write(f"{method} {path}\n")


class Throttle:
    """Token bucket for one direction of one connection; counts the bytes in ``tally[key]``."""

    def __init__(self, rate: float | None, tally: Counter[str] | None = None, key: str = "") -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.sent = 0.0
        self.tally = tally
        self.key = key

    async def take(self, n: int) -> None:
        if self.tally is not None:
            self.tally[self.key] += n
        if not self.rate:
            return
        now = time.monotonic()
        # never bank more than 50 ms of idle credit
        self.t0 = max(self.t0, now - self.sent / self.rate - 0.05)
        self.sent += n
        due = self.t0 + self.sent / self.rate
        if due > now:
            await asyncio.sleep(due - now)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, throttle: Throttle) -> None:
    while n > 0:
        data = await reader.read(min(CHUNK, n))
        if not data:
            raise ConnectionError("client closed mid-body")
        n -= len(data)
        await throttle.take(len(data))
        writer.write(data)
        await writer.drain()


async def _requests(shaper: Shaper, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: Throttle) -> None:
    """Client -> upstream: delay each request head, forward its body throttled."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.LimitOverrunError:
            return
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        method, path = [*parts, "", ""][:2]
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower()] = v.strip()
        shaper.record(method, path)
        d = shaper.delay()
        if d:
            await asyncio.sleep(d)
        await throttle.take(len(head))
        writer.write(head)
        await writer.drain()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                writer.write(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until an empty line
                    while True:
                        line = await reader.readuntil(b"\r\n")
                        writer.write(line)
                        if line == b"\r\n":
                            break
                    await writer.drain()
                    break
                await _copy(reader, writer, size + 2, throttle)
        else:
            n = int(headers.get(b"content-length", b"0") or 0)
            if n:
                await _copy(reader, writer, n, throttle)


async def _responses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: Throttle) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        await throttle.take(len(data))
        writer.write(data)
        await writer.drain()


async def _handle(shaper: Shaper, upstream: tuple[str, int], creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
    try:
        ureader, uwriter = await asyncio.open_connection(*upstream)
    except OSError:
        cwriter.close()
        return
    up = asyncio.create_task(_requests(shaper, creader, uwriter, Throttle(shaper.bandwidth, shaper.tally, "up")))
    down = asyncio.create_task(_responses(ureader, cwriter, Throttle(shaper.bandwidth, shaper.tally, "down")))
    try:
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (up, down):
            t.cancel()
        for w in (uwriter, cwriter):
            with contextlib.suppress(Exception):
                w.close()


async def serve(args: argparse.Namespace) -> None:
    host, port = args.upstream.rsplit(":", 1)
    lo, _, hi = args.latency_ms.partition(",")
    latency = (float(lo) / 1000, float(hi or lo) / 1000)
    bw = args.bandwidth_mbs * 1e6 if args.bandwidth_mbs else None
    shaper = Shaper(latency, bw, args.seed, args.log)
    server = await asyncio.start_server(
        lambda r, w: _handle(shaper, (host, int(port)), r, w), "127.0.0.1", args.port, limit=1 << 20
    )
    dumping = asyncio.create_task(_dump_counts(shaper, args.counts)) if args.counts else None
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    async with server:
        await server.serve_forever()
    if dumping is not None:
        dumping.cancel()


async def _dump_counts(shaper: Shaper, path: str) -> None:
    """Rewrite ``path`` with the shaper's tallies whenever they changed, every 20 ms."""
    last: dict[str, int] = {}
    while True:
        await asyncio.sleep(0.02)
        snap = dict(shaper.tally)
        if snap != last:
            with open(path + ".tmp", "w") as f:
                json.dump(snap, f)
            os.replace(path + ".tmp", path)
            last = snap


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="host:port of the real server")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", default="0", help="per-request latency, 'MS' or 'LO,HI' (uniform)")
    p.add_argument("--bandwidth-mbs", type=float, default=0.0, help="cap per connection and direction, MB/s (0 = none)")
    p.add_argument("--log", default=None, help="append 'METHOD PATH' per request here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--counts", default=None, help="keep the bytes forwarded each way and the requests by method here (JSON)")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
