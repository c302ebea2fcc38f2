"""safetensors export and import MB/s, on local disk and on S3 (a moto server).

    python -m benchmarks.safetensors_io                     # 512 MiB state, 128 MB shards, 3 runs
    python -m benchmarks.safetensors_io --mib 256 --runs 1   # quicker

The state is ``--mib`` MiB of float32 tensors of 8 MiB plus 64 small ones
(a model's biases and norms), saved once with ``cloudckpt.save``. Each case
times one call, in this process, and prints the median MB/s (MiB of
tensors per second) and the peak of fresh allocations of its last run
(``tracemalloc``):

* export local -> local, local -> S3, S3 -> local (``export_safetensors``);
* import local -> local (files mapped), S3 -> local (tensors fetched by
  ranged reads and spooled to local disk) (``import_safetensors``);
* for reference, ``cloudckpt.save`` and ``cloudckpt.load`` of the same state
  on the same S3 server (what it sustains), and ``safetensors.numpy.save_file``
  of the same arrays already in memory, to a local file (no sharding, no
  read of a checkpoint).

Local files are in the page cache (written just before): these are warm numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

import cloudckpt
from benchmarks.targets import make_target, moto_available
from cloudckpt.tools.safetensors_io import export_safetensors, import_safetensors


def state_of(mib: int) -> dict[str, Any]:
    """``mib`` MiB of 8 MiB float32 tensors and 64 small ones, under ``model``."""
    rng = np.random.default_rng(0)
    model: dict[str, np.ndarray] = {}
    for i in range(max(1, mib // 8)):
        model[f"layers.{i}.weight"] = rng.standard_normal(2 << 20, dtype=np.float32)
    for i in range(64):
        model[f"layers.{i}.norm.bias"] = rng.standard_normal(1024, dtype=np.float32)
    return {"model": model, "step": 1}


def timed(fn: Callable[[], Any], runs: int, nbytes: int, reset: Callable[[], None]) -> tuple[float, float]:
    """(median MiB/s, peak MiB allocated in the last run) of ``fn``; ``reset`` runs before each."""
    rates = []
    peak = 0
    for i in range(runs):
        reset()
        last = i == runs - 1
        if last:
            tracemalloc.start()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if last:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        rates.append(nbytes / seconds / 2**20)
    return statistics.median(rates), peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=512, help="MiB of tensors (default 512)")
    p.add_argument("--shard", default="128MB", help="max shard size (default 128MB)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    local = make_target("local")
    local.start()
    targets = [local]
    s3 = None
    if moto_available():
        s3 = make_target("s3")
        s3.start()
        targets.append(s3)
    try:
        state = state_of(args.mib)
        nbytes = sum(a.nbytes for a in state["model"].values())
        ckpt = {t.name: cloudckpt.save(t.url(f"ckpt-{uuid.uuid4().hex[:6]}"), state, storage_options=t.storage_options)
                for t in targets}  # fmt: skip
        print(f"state: {nbytes / 2**20:.0f} MiB in {len(state['model'])} tensors; shards of at most {args.shard}; "
              f"median of {args.runs} runs")  # fmt: skip
        print(f"{'case':40s} {'MiB/s':>8s} {'peak MiB':>9s}")
        hf = {t.name: t.url("hf") for t in targets}

        def case(label: str, fn: Callable[[], Any], reset: Callable[[], None] = lambda: None) -> None:
            rate, peak = timed(fn, args.runs, nbytes, reset)
            print(f"{label:40s} {rate:8.1f} {peak:9.1f}", flush=True)

        for src, dst in [("local", "local"), ("local", "s3"), ("s3", "local")]:
            if src not in ckpt or dst not in hf:
                continue
            d = next(t for t in targets if t.name == dst)
            s = next(t for t in targets if t.name == src)
            case(f"export {src} -> {dst}", lambda s=s, d=d, src=src, dst=dst: export_safetensors(
                ckpt[src], hf[dst], prefix="model", max_shard_size=args.shard, overwrite=True,
                storage_options=s.storage_options or None, dest_storage_options=d.storage_options or None))  # fmt: skip
        for src in ["local", "s3"]:
            if src not in hf:
                continue
            s = next(t for t in targets if t.name == src)
            urls: list[str] = []

            def fresh(urls: list[str] = urls) -> None:
                urls.append(local.url(f"imported-{uuid.uuid4().hex[:8]}"))

            case(f"import {src} -> local", lambda s=s, src=src, urls=urls: import_safetensors(
                hf[src], urls[-1], prefix="model", storage_options=s.storage_options or None), fresh)  # fmt: skip
        if s3 is not None:  # what the same server takes for cloudckpt's own save and load of this state
            s3t = s3
            case("reference: cloudckpt.save -> s3", lambda: cloudckpt.save(
                s3t.url(f"ref-{uuid.uuid4().hex[:8]}"), state, storage_options=s3t.storage_options))  # fmt: skip
            case("reference: cloudckpt.load s3", lambda: cloudckpt.load(ckpt["s3"], storage_options=s3t.storage_options))
        try:
            from safetensors.numpy import save_file
        except ImportError:
            print("safetensors is not installed: no reference row")
        else:
            model = state["model"]
            case("reference: safetensors.numpy.save_file", lambda: save_file(model, local.url("ref.safetensors")))
    finally:
        for t in targets:
            t.stop()


if __name__ == "__main__":
    main()
