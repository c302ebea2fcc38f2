"""crc32c implementations compared: the ``crc32c`` package against ``google-crc32c``.

    python -m benchmarks.checksums

Prints GB/s for one 256 MiB buffer, for 16,384 buffers of 4 KiB (the small
tensors of a pack object), and for two threads each over its own 256 MiB
buffer (a load verifies objects on several threads: an implementation that
holds the GIL verifies one at a time). Both are given the same writable
buffers a save or a load holds: ``google-crc32c`` accepts only read-only
ones, so it gets a read-only NumPy view of each (no copy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZE = 256 << 20
SMALL = 4096


def implementations() -> dict[str, Callable[[Any, int], int]]:
    """Name -> ``crc(buffer, value)`` for each package that is installed."""
    out: dict[str, Callable[[Any, int], int]] = {}
    try:
        import crc32c

        out[f"crc32c {_version('crc32c')}"] = lambda b, v: crc32c.crc32c(b, v)
    except ImportError:
        pass
    try:
        from google_crc32c import cext

        def google(b: Any, v: int) -> int:
            a = np.frombuffer(b, dtype=np.uint8)
            if a.flags.writeable:
                a.flags.writeable = False
            return int(cext.extend(v, a))

        out[f"google-crc32c {_version('google-crc32c')}"] = google
    except ImportError:
        pass
    return out


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _best(fn: Callable[[], None], reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(crc: Callable[[Any, int], int]) -> dict[str, float]:
    """GB/s of ``crc`` on one large buffer, many small ones, and two threads."""
    rng = np.random.default_rng(0)
    bufs = [bytearray(rng.integers(0, 256, SIZE, dtype=np.uint8).tobytes()) for _ in range(2)]
    views = [memoryview(b) for b in bufs]
    small = [views[0][i : i + SMALL] for i in range(0, 64 << 20, SMALL)]
    assert crc(b"123456789", 0) == 0xE3069283
    one = SIZE / _best(lambda: crc(views[0], 0)) / 1e9
    many = (64 << 20) / _best(lambda: [crc(s, 0) for s in small], 3) / 1e9

    def two() -> None:
        threads = [threading.Thread(target=crc, args=(v, 0)) for v in views]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    both = 2 * SIZE / _best(two, 3) / 1e9
    return {"256 MiB": one, "4 KiB x 16,384": many, "2 threads": both}


def main() -> None:
    rows = {name: measure(fn) for name, fn in implementations().items()}
    cols = ["256 MiB", "4 KiB x 16,384", "2 threads"]
    print("| implementation | " + " | ".join(f"{c} (GB/s)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
