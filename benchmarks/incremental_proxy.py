"""Targets whose proxy counts bytes: benchmarks/proxy.py with ``--counts`` (the bytes it forwards each way and the
requests by method, kept in a JSON file), and reading those tallies.

``up`` counts request heads and bodies (what the server received), ``down``
the responses. :func:`counting_target` starts ``s3-lat`` (moto) or ``gcs``
(fake-gcs-server) behind it, as benchmarks/targets.py does.
"""

from __future__ import annotations

import json
import time
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


class CountingProxy(ShapingProxy):
    """benchmarks/proxy.py in front of ``upstream`` (host:port), counting bytes: ``counts`` is the file of its tallies."""

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


