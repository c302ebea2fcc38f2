"""Incremental saves: what a later save sends, how long it takes, what it costs on disk and at load time.

    python -m benchmarks.incremental                        # the full run (~10 min on 2 cores)
    python -m benchmarks.incremental --smoke                # tiny scale, local + memory, ~1 min
    python -m benchmarks.incremental --only finetune,loads  # some sections (finetune, loads, llm, cp)

Workloads:

* ``finetune``: a LoRA fine-tuning state (:func:`finetune_spec`): a frozen
  base model shaped like a small Llama (d_model 1280, 9 layers, MLP 3456,
  vocabulary 32,000, untied head; q/k/v biases), a rank-8 adapter pair
  (``lora_A`` ``[8, in]``, ``lora_B`` ``[out, 8]``) on every attention and MLP
  matrix, Adam ``exp_avg``/``exp_avg_sq``/``step`` for the adapters only, and a
  step counter; names and order as a PEFT model's ``state_dict()`` (each
  adapter right after the matrix it adapts). ~1.06 GB at scale 1, ~2.0 % of
  it changing between saves (adapters, their moments, the counters).
  ``--scale`` multiplies the leading axis of every tensor but ``lora_A``.
* ``llm-like`` (benchmarks/workloads.py): GPT-2-shaped parameters with Adam
  state, ~0.97 GB; between saves every tensor changes (``+= 1``).

Sections (each save series and each load in a fresh process; incremental and
full interleaved, their order alternating):

1. ``finetune``: one manager per series (``CheckpointManager(..., incremental=
   True|False)``), a first save and ``--saves`` later ones, the adapters and
   moments updated between saves; per save: seconds, bytes sent to the server
   (s3-lat: request heads + bodies counted by this module's shaping proxy,
   ``--serve-proxy``, which wraps benchmarks/proxy.py), bytes the storage layer
   wrote and copied (``storage.stats``); on local disk the disk bytes of each
   run's directory (``st_blocks`` of every inode once: hard links count once).
2. ``loads``: the latest checkpoint of each series, loaded by a new process:
   local cold (its files evicted from the page cache, checked) and warm; s3-lat
   with a new client.
3. ``llm``: ``checksums_many`` (crc32c + XXH3-128) against crc32c alone, GB/s in
   this process over the state's tensors, against the save throughput of a
   non-incremental save on local disk; and incremental vs full later saves of a
   state that changes entirely.
4. ``cp``: ``cloudckpt.copy`` of a directory of 10 incremental finetune
   checkpoints (local disk) to GCS (fake-gcs-server behind the counting proxy;
   local disk with ``--smoke``): bytes sent to the destination.

Results (machine, command, every raw figure, the targets) go to ``--out``
(default benchmarks/results_incremental.json), a markdown table to
``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results_incremental.json"

# the finetune model at scale 1
D_MODEL, FFN, LAYERS, VOCAB, RANK = 1280, 3456, 9, 32000, 8

Spec = list[tuple[str, tuple[int, ...], str, str]]  # name, shape, dtype, kind


# --------------------------------------------------------------------------- workloads


def _lead(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    if not shape or scale == 1.0:
        return shape
    return (max(1, round(shape[0] * scale)), *shape[1:])


def finetune_spec(scale: float = 1.0) -> Spec:
    """The tensors of the finetune state: (name, shape, dtype, kind), kind one of
    ``frozen``, ``adapter``, ``exp_avg``, ``exp_avg_sq``, ``adam_step``, ``step``.

    Example:
        >>> spec = finetune_spec(1.0)
        >>> total = sum(math.prod(s) * 4 for _, s, _, _ in spec if s)
        >>> changed = sum(math.prod(s) * 4 for _, s, _, k in spec if k != "frozen")
        >>> round(total / 1e9, 2), round(100 * changed / total, 1)
        (1.06, 2.0)
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    d, f = D_MODEL, FFN
    model: Spec = [("model.embed_tokens.weight", _lead((VOCAB, d), scale), "float32", "frozen")]
    adapters: list[tuple[str, tuple[int, ...]]] = []
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        model.append((p + "input_layernorm.weight", _lead((d,), scale), "float32", "frozen"))
        mats = [("self_attn.q_proj", (d, d), True), ("self_attn.k_proj", (d, d), True),
                ("self_attn.v_proj", (d, d), True), ("self_attn.o_proj", (d, d), False),
                ("post_attention_layernorm", None, False),
                ("mlp.gate_proj", (f, d), False), ("mlp.up_proj", (f, d), False), ("mlp.down_proj", (d, f), False)]
        for name, shape, bias in mats:
            if shape is None:
                model.append((p + name + ".weight", _lead((d,), scale), "float32", "frozen"))
                continue
            w = _lead(shape, scale)
            model.append((p + name + ".base_layer.weight", w, "float32", "frozen"))
            if bias:
                model.append((p + name + ".base_layer.bias", (w[0],), "float32", "frozen"))
            a, b = (RANK, w[1]), (w[0], RANK)
            model.append((p + name + ".lora_A.default.weight", a, "float32", "adapter"))
            model.append((p + name + ".lora_B.default.weight", b, "float32", "adapter"))
            adapters += [(p + name + ".lora_A.default.weight", a), (p + name + ".lora_B.default.weight", b)]
    model.append(("model.norm.weight", _lead((d,), scale), "float32", "frozen"))
    model.append(("lm_head.weight", _lead((VOCAB, d), scale), "float32", "frozen"))
    optim: Spec = []
    for name, shape in adapters:
        optim.append((f"optimizer.state.{name}.exp_avg", shape, "float32", "exp_avg"))
        optim.append((f"optimizer.state.{name}.exp_avg_sq", shape, "float32", "exp_avg_sq"))
        optim.append((f"optimizer.state.{name}.step", (), "float32", "adam_step"))
    return [*model, *optim, ("step", (), "int64", "step")]


def _rand(name: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n = math.prod(shape)
    if np.dtype(dtype).kind == "i":
        return np.zeros(shape, dtype)
    return rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False).reshape(shape)


def make_workload(name: str, scale: float, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Checkpoint's keyword arguments, facts: bytes, changed bytes per save, tensors)."""
    if name == "finetune":
        spec = finetune_spec(scale)
        model: dict[str, np.ndarray] = {}
        state: dict[str, dict[str, np.ndarray]] = {}
        step = np.zeros((), np.int64)
        for tname, shape, dt, kind in spec:
            if kind in ("frozen", "adapter"):
                model[tname] = _rand(tname, shape, dt, seed)
            elif kind in ("exp_avg", "exp_avg_sq", "adam_step"):
                pname, field = tname[len("optimizer.state."):].rsplit(".", 1)
                arr = np.zeros((), np.float32) if kind == "adam_step" else np.abs(_rand(tname, shape, dt, seed)) * 1e-3
                state.setdefault(pname, {})[field] = arr
        groups = [{"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "params": list(state)}]
        tree = {"model": model, "optimizer": {"state": state, "param_groups": groups}, "step": step}
        nbytes = sum(a.nbytes for a in _arrays(tree))
        changed = sum(math.prod(s) * np.dtype(dt).itemsize for _, s, dt, k in spec if k != "frozen")
        return tree, {"bytes": nbytes, "changed_bytes": changed, "tensors": len(spec),
                      "changed_tensors": sum(1 for *_, k in spec if k != "frozen")}
    if name == "llm-like":
        from benchmarks.workloads import make_state, workload_spec

        flat = make_state(workload_spec("llm-like", scale), seed)
        nbytes = sum(a.nbytes for a in flat.values())
        return {"state": flat}, {"bytes": nbytes, "changed_bytes": nbytes, "tensors": len(flat), "changed_tensors": len(flat)}
    raise ValueError(f"unknown workload {name!r}: finetune or llm-like")


def _arrays(tree: Any) -> list[np.ndarray]:
    return [a for _, a in _leaves(tree)]


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """(path, array) of every numpy array / scalar in a tree of dicts and lists, in tree order."""
    out: list[tuple[str, np.ndarray]] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out += _leaves(v, f"{prefix}/{i}")
    elif isinstance(tree, (np.ndarray, np.generic)):
        out.append((prefix, np.asarray(tree)))
    return out


def state_digest(tree: Any) -> str:
    """crc32c of every array's name, dtype, shape and bytes (``save_counter`` left out): equal iff bit-equal."""
    from benchmarks.workloads import digest

    if isinstance(tree, dict):
        tree = {k: v for k, v in tree.items() if k != "save_counter"}
    return digest(_leaves(tree))


def mutate(name: str, tree: dict[str, Any], t: int) -> None:
    """One training step's change, in place: the adapters, their moments and the counters (finetune),
    every tensor (llm-like)."""
    if name == "llm-like":
        for a in tree["state"].values():
            np.add(a, 1, out=a, casting="unsafe")
        return
    rng = np.random.default_rng([99, t])
    model, state = tree["model"], tree["optimizer"]["state"]
    for pname, s in state.items():
        p = model[pname]
        g = rng.standard_normal(p.size, dtype=np.float32).reshape(p.shape) * np.float32(1e-3)
        s["exp_avg"] *= np.float32(0.9)
        s["exp_avg"] += np.float32(0.1) * g
        s["exp_avg_sq"] *= np.float32(0.999)
        s["exp_avg_sq"] += np.float32(0.001) * g * g
        s["step"] += np.float32(1)
        p -= np.float32(1e-4) * s["exp_avg"] / (np.sqrt(s["exp_avg_sq"]) + np.float32(1e-8))
    tree["step"] += 1


# --------------------------------------------------------------------------- counting proxy


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


class CountingProxy:
    """A :func:`serve_proxy` subprocess in front of ``upstream`` (host:port)."""

    def __init__(self, upstream: str, latency_ms: str, bandwidth_mbs: float, tmpdir: str) -> None:
        self.log = Path(tmpdir) / "proxy.log"
        self.counts = str(Path(tmpdir) / "proxy-counts.json")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.incremental", "--serve-proxy", "--upstream", upstream,
             "--latency-ms", latency_ms, "--bandwidth-mbs", str(bandwidth_mbs), "--log", str(self.log),
             "--counts", self.counts],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"counting proxy did not start: {line!r}")
        self.endpoint_url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def counting_target(name: str, latency_ms: str = "20,50", bandwidth_mbs: float = 25.0) -> Any:
    """``s3-lat`` (moto behind the shaping proxy) or ``gcs`` (fake-gcs-server behind an unshaped one), both
    proxies counting bytes: the target's ``counts`` is the path of the proxy's tallies."""
    from benchmarks import targets as T

    if name == "s3-lat":
        class CountingS3(T.S3Target):
            counts: str | None = None

            def start(self) -> None:
                servers = T._servers()
                self.srv = servers.start_moto_server()
                servers.make_s3_bucket(self.srv.endpoint_url, T.BUCKET)
                self.proxy = CountingProxy(self.srv.endpoint_url.split("//", 1)[1], self.latency_ms,  # type: ignore[assignment]
                                           self.bandwidth_mbs, self.srv.tmpdir)
                self.counts = self.proxy.counts  # type: ignore[attr-defined]
                self._count = T._LogCounter(self.proxy.log, moto=False)  # type: ignore[attr-defined]

        return CountingS3(shaped=True, latency_ms=latency_ms, bandwidth_mbs=bandwidth_mbs)
    if name == "gcs":
        class CountingGCS(T.GCSTarget):
            counts: str | None = None

            def start(self) -> None:
                servers = T._servers()
                self.srv = servers.start_fake_gcs_server()
                servers.make_gcs_bucket(self.srv.endpoint_url, T.BUCKET)
                self.proxy = CountingProxy(self.srv.endpoint_url.split("//", 1)[1], "0", 0, self.srv.tmpdir)  # type: ignore[assignment]
                self.counts = self.proxy.counts  # type: ignore[attr-defined]
                self._count = T._LogCounter(self.proxy.log, moto=False)  # type: ignore[attr-defined]

        return CountingGCS()
    raise ValueError(name)


# --------------------------------------------------------------------------- measurements (child side)


def _open_manager(spec: dict[str, Any], tree: dict[str, Any]) -> Any:
    import cloudckpt

    options = None
    if spec.get("pack_threshold") is not None:
        options = cloudckpt.StoreOptions(pack_threshold=int(spec["pack_threshold"]))
    return cloudckpt.CheckpointManager(cloudckpt.Checkpoint(**tree), spec["dir"], max_to_keep=spec.get("keep"),
                                       storage_options=spec.get("storage_options") or None,
                                       incremental=spec["incremental"], options=options)


def run_series(spec: dict[str, Any]) -> dict[str, Any]:
    """One manager, ``spec["saves"]`` saves, the state changed between them (untimed); per save what it cost."""
    t = time.perf_counter()
    tree, facts = make_workload(spec["workload"], spec["scale"], spec.get("seed", 0))
    gen_s = time.perf_counter() - t
    manager = _open_manager(spec, tree)
    stats = manager._storage.stats
    counts = spec.get("counts")
    saves = []
    url = None
    for i in range(spec["saves"]):
        if i:
            mutate(spec["workload"], tree, i)
        c0, s0 = read_counts(counts), stats.snapshot()
        t0 = time.perf_counter()
        url = manager.save()
        seconds = time.perf_counter() - t0
        c1, s1 = settled_counts(counts), stats.snapshot()
        ops = {k: s1[k] - s0.get(k, 0) for k in s1 if isinstance(s1[k], int) and s1[k] - s0.get(k, 0)}
        saves.append({"i": i, "url": url, "seconds": seconds, "bytes_written": ops.get("bytes_written", 0),
                      "bytes_copied": ops.get("bytes_copied", 0), "ops": ops, "proxy": counts_between(c0, c1)})
    out = {"workload": spec["workload"], "scale": spec["scale"], "incremental": spec["incremental"], "gen_s": gen_s,
           **facts, "saves": saves, "latest": url, "digest": state_digest(tree)}
    if spec.get("verify_load"):  # memory://: the load must be this process's
        import cloudckpt

        t0 = time.perf_counter()
        loaded = cloudckpt.load(url, storage_options=spec.get("storage_options") or None)
        out["load_s"] = time.perf_counter() - t0
        out["verified"] = state_digest(loaded) == out["digest"]
    manager.close()
    return out


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The first load of this (new) process: import, then ``cloudckpt.load`` of the checkpoint, then its digest."""
    t_start = time.clock_gettime(time.CLOCK_MONOTONIC)
    import cloudckpt

    t_imported = time.clock_gettime(time.CLOCK_MONOTONIC)
    loaded = cloudckpt.load(spec["url"], storage_options=spec.get("storage_options") or None)
    t_loaded = time.clock_gettime(time.CLOCK_MONOTONIC)
    ok = state_digest(loaded) == spec["digest"]
    return {"import_s": t_imported - t_start, "load_s": t_loaded - t_imported,
            "first_load_s": t_loaded - spec["t_spawn"], "verified": ok}


def run_hash(spec: dict[str, Any]) -> dict[str, Any]:
    """GB/s of crc32c alone, XXH3-128 alone and ``checksums_many`` (both, one pass) over the workload's tensors,
    one buffer per tensor, best of ``reps``, this thread."""
    from cloudckpt.format.checksum import checksums_many, content_hash_many, crc32c_of

    tree, _facts = make_workload(spec["workload"], spec["scale"])
    bufs = [memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for a in _arrays(tree)]
    nbytes = sum(b.nbytes for b in bufs)
    fns = {"crc32c": lambda b: crc32c_of(b), "xxh3": lambda b: content_hash_many([b]),
           "checksums_many": lambda b: checksums_many([b])}
    out: dict[str, Any] = {"bytes": nbytes, "tensors": len(bufs), "reps": spec.get("reps", 3), "seconds": {}}
    for name, fn in fns.items():
        times = []
        for _ in range(out["reps"]):
            t = time.perf_counter()
            for b in bufs:
                fn(b)
            times.append(time.perf_counter() - t)
        out["seconds"][name] = times
    out["gbps"] = {k: nbytes / min(v) / 1e9 for k, v in out["seconds"].items()}
    return out


def run_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """``cloudckpt.copy`` of a directory; what the destination was sent; the latest copied checkpoint verified."""
    import cloudckpt

    seen: dict[str, Any] = {}
    c0 = read_counts(spec.get("counts"))
    t = time.perf_counter()
    report = cloudckpt.copy(spec["src"], spec["dst"], dst_storage_options=spec.get("dst_storage_options") or None,
                            _on_open=lambda s, d: seen.update(dst=d))
    seconds = time.perf_counter() - t
    c1 = settled_counts(spec.get("counts"))
    stats = seen["dst"].stats.snapshot()
    latest = cloudckpt.latest_checkpoint(spec["dst"], storage_options=spec.get("dst_storage_options") or None)
    loaded = cloudckpt.load(latest, storage_options=spec.get("dst_storage_options") or None)
    return {"seconds": seconds, "report": report.to_dict(), "dst_stats": stats, "proxy": counts_between(c0, c1),
            "latest": latest, "verified": state_digest(loaded) == spec["digest"]}


def run_copy_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """What one server-side copy costs on this store, against a write of the same object: one 32 MiB object
    written, copied once alone and ``n`` times concurrently (as a save's copies run), written ``n`` times
    concurrently; seconds each."""
    from concurrent.futures import ThreadPoolExecutor

    from cloudckpt.storage import open_storage

    s = open_storage(spec["dir"], spec.get("storage_options") or None)
    size, n = spec.get("size", 32 << 20), spec.get("n", 8)
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    out: dict[str, Any] = {"object_bytes": size, "concurrent": n}
    t = time.perf_counter()
    s.write("probe/src", [data])
    out["write_one_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s.copy_from(s, "probe/src", "probe/copy-one", size=size)
    out["copy_one_s"] = time.perf_counter() - t
    with ThreadPoolExecutor(n) as pool:
        t = time.perf_counter()
        list(pool.map(lambda i: s.copy_from(s, "probe/src", f"probe/copy-{i}", size=size), range(n)))
        out["copy_concurrent_s"] = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(lambda i: s.write(f"probe/write-{i}", [data]), range(n)))
        out["write_concurrent_s"] = time.perf_counter() - t
    out["copy_mbps_concurrent"] = n * size / out["copy_concurrent_s"] / 1e6
    out["write_mbps_concurrent"] = n * size / out["write_concurrent_s"] / 1e6
    return out


def run_ablation(spec: dict[str, Any]) -> dict[str, Any]:
    """The wall-clock cost of the XXH3-128 in a save: non-incremental ``cloudckpt.save`` of the workload with
    ``checksums_many`` as shipped, and with it replaced (in this process only) by crc32c alone (a constant in
    place of the hash), interleaved, ``reps`` each; seconds of every save. The first pair (rep 0) warms the
    process up (imports, thread pools) and is left out of the summary."""
    import cloudckpt
    from cloudckpt.format import checksum, reuse

    tree, facts = make_workload(spec["workload"], spec["scale"])
    shipped = reuse.checksums_many

    def crc_only(buffers: Any) -> tuple[int, str]:
        return checksum.crc32c_many(buffers), "0" * 32

    times: dict[str, list[float]] = {"crc32c+xxh3": [], "crc32c only": []}
    for rep in range(spec["reps"]):
        for i, variant in enumerate(times if rep % 2 == 0 else reversed(list(times))):
            reuse.checksums_many = shipped if variant == "crc32c+xxh3" else crc_only  # type: ignore[assignment]
            url = f"{spec['dir']}/abl-{rep}-{i}"
            os.sync()  # (the previous save's removal written back first: both variants start alike)
            t = time.perf_counter()
            cloudckpt.save(url, tree)
            times[variant].append(time.perf_counter() - t)
            reuse.checksums_many = shipped  # type: ignore[assignment]
            if url.startswith("memory://"):
                import fsspec

                fsspec.filesystem("memory").rm(url[len("memory://"):], recursive=True)
            else:
                shutil.rmtree(url, ignore_errors=True)
    return {"bytes": facts["bytes"], "reps": spec["reps"], "seconds": times}


PHASES = {"ablation": run_ablation, "copyprobe": run_copy_probe, "series": run_series, "load": run_load, "hash": run_hash, "copy": run_copy}


def child_main(arg: str) -> None:
    spec = json.loads(arg)
    result = PHASES[spec["phase"]](spec)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------- parent side


def spawn(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one phase in a new process; its result."""
    spec = {**spec, "t_spawn": time.clock_gettime(time.CLOCK_MONOTONIC)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.incremental", "--child", json.dumps(spec)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"{spec['phase']} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")


def disk_usage(path: str) -> dict[str, int]:
    """Bytes on disk under ``path`` (``st_blocks`` x 512, each inode once: hard links counted once), the
    apparent bytes of every file name, files and distinct inodes."""
    seen: set[tuple[int, int]] = set()
    disk = apparent = files = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(root, n))
            files += 1
            apparent += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                disk += st.st_blocks * 512
    return {"disk_bytes": disk, "apparent_bytes": apparent, "files": files, "inodes": len(seen)}


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _later(series: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for r in series for s in r["saves"][1:]]


def _sent(save: dict[str, Any]) -> int:
    """Bytes sent to the server by one save: the proxy's count where there is one, else the bytes written."""
    proxy = save.get("proxy")
    return int(proxy.get("up", 0)) if proxy is not None else int(save["bytes_written"])


def _spread(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"n": len(xs), "median": _med(xs), "min": min(xs), "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / _med(xs) if _med(xs) else float("nan")}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="cloudckpt-incr-")
        os.makedirs(self.workdir, exist_ok=True)
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def target(self, name: str, what: str, value: float, limit: float, op: str, met: bool, note: str = "") -> None:
        self.targets.append({"name": name, "what": what, "value": value, "limit": limit, "op": op, "met": met,
                             "note": note})
        self.log(f"target {name}: {value:.4g} {op} {limit:.4g}: {'met' if met else 'NOT met'} {note}")

    # ---- 1 + 2: finetune series and their loads

    def finetune(self, tname: str, with_loads: bool) -> None:
        a = self.args
        target: Any = None
        if tname == "s3-lat":
            target = counting_target("s3-lat", a.latency_ms, a.bandwidth_mbs)
        elif tname == "local":
            from benchmarks.targets import LocalTarget

            target = LocalTarget(os.path.join(self.workdir, "local"))
        else:
            from benchmarks.targets import MemoryTarget

            target = MemoryTarget()
        target.start()
        try:
            if tname == "s3-lat":
                probe = spawn({"phase": "copyprobe", "dir": target.url("probe"), "storage_options": target.storage_options})
                self.log(f"s3-lat copy probe: {json.dumps({k: round(v, 3) for k, v in probe.items()})}")
                self.results.setdefault("copy_probe", {})[tname] = probe
                target.cleanup("")
            for variant in a.variants.split(","):
                self.finetune_variant(target, tname, variant, with_loads)
        finally:
            target.stop()

    def finetune_variant(self, target: Any, tname: str, variant: str, with_loads: bool) -> None:
        """Series of saves of the finetune state, incremental and full, interleaved; their loads. ``variant``:
        ``default`` (default StoreOptions) or ``split`` (``StoreOptions(pack_threshold=1 MiB x scale)``: every
        tensor of at least that size its own object, the pack holding only the small ones)."""
        a = self.args
        series: dict[str, list[dict[str, Any]]] = {"incremental": [], "full": []}
        loads: list[dict[str, Any]] = []
        threshold = None if variant == "default" else max(4096, int((1 << 20) * a.scale))
        reps = a.local_reps if tname == "local" else a.reps
        for rep in range(reps):
            order = ["incremental", "full"] if (rep + (tname == "local")) % 2 == 0 else ["full", "incremental"]
            dirs = {}
            for mode in order:
                key = f"ft-{variant}-{mode}-{rep}"
                spec = {"phase": "series", "workload": "finetune", "scale": a.scale, "saves": a.saves + 1,
                        "dir": target.url(key), "storage_options": target.storage_options,
                        "incremental": mode == "incremental", "counts": getattr(target, "counts", None),
                        "keep": 2 if tname == "s3-lat" else None, "verify_load": target.in_process,
                        "pack_threshold": threshold}
                self.log(f"finetune {tname} {variant} {mode} rep {rep}: {spec['saves']} saves")
                if tname == "local":
                    shutil.rmtree(spec["dir"], ignore_errors=True)  # (a --workdir of an earlier run)
                r = run_series(spec) if target.in_process else spawn(spec)
                r["rep"] = rep
                if tname == "local":
                    r["disk"] = disk_usage(spec["dir"])
                    r["disk_latest"] = disk_usage(r["latest"])
                secs = [round(s["seconds"], 3) for s in r["saves"]]
                self.log(f"  seconds {secs}; sent {[_sent(s) for s in r['saves']]}; "
                         f"copied {[s['bytes_copied'] for s in r['saves']]}")
                series[mode].append(r)
                dirs[mode] = r
            if with_loads and not target.in_process:
                loads += self.loads(target, tname, dirs, rep)
            if tname == "local" and not a.keep_files:
                for r in dirs.values():
                    target.cleanup(os.path.dirname(r["latest"]))
            if tname == "s3-lat":
                target.cleanup("")
        name = tname if variant == "default" else f"{tname} {variant}"
        self.results.setdefault("finetune", {})[name] = {"describe": target.describe(), "variant": variant,
                                                         "pack_threshold": threshold, "series": series}
        self.finetune_targets(name, series)
        if loads:
            self.results.setdefault("loads", {})[name] = loads
            self.load_targets(name, loads)

    def loads(self, target: Any, tname: str, dirs: dict[str, dict[str, Any]], rep: int) -> list[dict[str, Any]]:
        from benchmarks import pagecache

        out = []
        caches = ["cold", "warm"] if tname == "local" else ["fresh-client"]
        for k in range(self.args.load_reps):
            for cache in caches:
                modes = ["incremental", "full"] if (k + rep) % 2 == 0 else ["full", "incremental"]
                for mode in modes:
                    r = dirs[mode]
                    pc = None
                    if cache == "cold":
                        pc = pagecache.evict(r["latest"])
                    elif cache == "warm":
                        pc = pagecache.warm(r["latest"])
                    label = cache if pc is None or pc["ok"] else f"not-{cache}"
                    res = spawn({"phase": "load", "url": r["latest"], "storage_options": target.storage_options,
                                 "digest": r["digest"]})
                    res.update(mode=mode, cache=label, rep=rep, k=k, page_cache=pc)
                    self.log(f"load {tname} {mode} {label}: {res['load_s']:.3f} s, verified {res['verified']}")
                    out.append(res)
        return out

    def finetune_targets(self, tname: str, series: dict[str, list[dict[str, Any]]]) -> None:
        inc, full = series["incremental"], series["full"]
        if not inc or not full:
            return
        changed = inc[0]["changed_bytes"]
        inc_s, full_s = _med(_later(inc, "seconds")), _med(_later(full, "seconds"))
        sent_inc = _med([_sent(s) for r in inc for s in r["saves"][1:]])
        sent_full = _med([_sent(s) for r in full for s in r["saves"][1:]])
        summary = {"changed_bytes": changed, "state_bytes": inc[0]["bytes"],
                   "later_save_s": {"incremental": _spread(_later(inc, "seconds")), "full": _spread(_later(full, "seconds"))},
                   "sent_per_later_save": {"incremental": sent_inc, "full": sent_full},
                   "copied_per_later_save": {"incremental": _med(_later(inc, "bytes_copied")),
                                             "full": _med(_later(full, "bytes_copied"))},
                   "first_save_s": {"incremental": _med([r["saves"][0]["seconds"] for r in inc]),
                                    "full": _med([r["saves"][0]["seconds"] for r in full])},
                   "speedup": full_s / inc_s}
        sent_what = "proxy: request heads + bodies" if inc[0]["saves"][0].get("proxy") is not None else "storage stats bytes_written"
        self.target(f"finetune {tname}: sent", f"median bytes sent per later incremental save ({sent_what}) / changed bytes",
                    sent_inc / changed, 1.5, "<=", sent_inc <= 1.5 * changed)
        self.target(f"finetune {tname}: speed", "median full later-save seconds / incremental", full_s / inc_s, 10, ">=",
                    full_s / inc_s >= 10)
        if "disk" in inc[0]:
            d_inc, d_full = _med([r["disk"]["disk_bytes"] for r in inc]), _med([r["disk"]["disk_bytes"] for r in full])
            one = _med([r["disk_latest"]["disk_bytes"] for r in full])
            n_later = len(inc[0]["saves"]) - 1
            limit = one + n_later * 1.5 * changed
            summary["disk"] = {"incremental_dir": d_inc, "full_dir": d_full, "one_full_checkpoint": one,
                               "checkpoints": len(inc[0]["saves"]),
                               "apparent_incremental_dir": _med([r["disk"]["apparent_bytes"] for r in inc])}
            self.target(f"finetune {tname}: disk", f"disk bytes of the incremental run's directory ({len(inc[0]['saves'])} "
                        "checkpoints, hard links once) vs one full checkpoint + later saves x 1.5 x changed",
                        d_inc, limit, "<=", d_inc <= limit)
        self.results["finetune"][tname]["summary"] = summary

    def load_targets(self, tname: str, loads: list[dict[str, Any]]) -> None:
        summary = {}
        for cache in sorted({r["cache"] for r in loads}):
            if cache.startswith("not-"):
                continue
            inc = [r["load_s"] for r in loads if r["cache"] == cache and r["mode"] == "incremental"]
            full = [r["load_s"] for r in loads if r["cache"] == cache and r["mode"] == "full"]
            if not inc or not full:
                continue
            ratio = _med(inc) / _med(full)
            summary[cache] = {"incremental": _spread(inc), "full": _spread(full), "ratio": ratio}
            self.target(f"loads {tname} {cache}: level", "median incremental load s / full load s (level: 0.9..1.1)",
                        ratio, 1.1, "<=", 0.9 <= ratio <= 1.1)
        ok = all(r["verified"] for r in loads)
        self.target(f"loads {tname}: bit-exact", "loads whose state equals the saved one (fraction)",
                    float(ok), 1.0, ">=", ok)
        self.results["loads"][tname + "_summary"] = summary

    # ---- 3: llm-like

    def llm(self) -> None:
        a = self.args
        from benchmarks.targets import LocalTarget

        shutil.rmtree(os.path.join(self.workdir, "llm"), ignore_errors=True)  # (a --workdir of an earlier run)
        target = LocalTarget(os.path.join(self.workdir, "llm"))
        target.start()
        self.log("llm-like: hash throughput in one process")
        h = spawn({"phase": "hash", "workload": "llm-like", "scale": a.llm_scale, "reps": 3})
        self.log(f"  GB/s {json.dumps({k: round(v, 2) for k, v in h['gbps'].items()})}")
        series: dict[str, list[dict[str, Any]]] = {"incremental": [], "full": []}
        for rep in range(a.llm_reps):
            for mode in (["full", "incremental"] if rep % 2 == 0 else ["incremental", "full"]):
                spec = {"phase": "series", "workload": "llm-like", "scale": a.llm_scale, "saves": a.llm_saves + 1,
                        "dir": target.url(f"llm-{mode}-{rep}"), "incremental": mode == "incremental", "keep": 2}
                r = spawn(spec)
                r["rep"] = rep
                self.log(f"llm-like {mode} rep {rep}: seconds {[round(s['seconds'], 3) for s in r['saves']]}, "
                         f"copied {[s['bytes_copied'] for s in r['saves']]}")
                series[mode].append(r)
                target.cleanup(spec["dir"])
        abl = {}
        for where in ("memory", "local"):
            d = "memory://bench-ablation" if where == "memory" else target.url("ablation")
            abl[where] = spawn({"phase": "ablation", "workload": "llm-like", "scale": a.llm_scale, "reps": a.llm_reps + 1,
                                "dir": d})
            self.log(f"llm-like {where}: save seconds with / without XXH3: "
                     f"{json.dumps({k: [round(x, 3) for x in v] for k, v in abl[where]['seconds'].items()})}")
        target.stop()
        full_s, inc_s = _later(series["full"], "seconds"), _later(series["incremental"], "seconds")
        all_full = [s["seconds"] for r in series["full"] for s in r["saves"]]
        first_full = [r["saves"][0]["seconds"] for r in series["full"]]
        nbytes = h["bytes"]
        save_gbps = nbytes / _med(all_full) / 1e9
        t = {k: min(v) for k, v in h["seconds"].items()}
        added = t["checksums_many"] - t["crc32c"]
        ablation = {}
        for where, res in abl.items():
            w_h, wo = res["seconds"]["crc32c+xxh3"][1:], res["seconds"]["crc32c only"][1:]  # rep 0: warm-up
            ablation[where] = {"with_xxh3_s": _spread(w_h), "crc32c_only_s": _spread(wo),
                               "added_pct": 100 * (_med(w_h) - _med(wo)) / _med(wo)}
        summary = {"state_bytes": nbytes, "hash_gbps": h["gbps"], "save_gbps_full": save_gbps,
                   "full_save_s_all": _spread(all_full), "full_first_save_s": _spread(first_full),
                   "full_later_save_s": _spread(full_s), "incremental_later_save_s": _spread(inc_s),
                   "checksums_many_s": t["checksums_many"], "crc32c_s": t["crc32c"], "xxh3_s": t["xxh3"],
                   "xxh3_added_s": added, "xxh3_added_pct_of_save": 100 * added / _med(all_full),
                   "xxh3_added_pct_of_first_save": 100 * added / _med(first_full),
                   "checksums_many_pct_of_save": 100 * t["checksums_many"] / _med(all_full),
                   "ablation": ablation,
                   "ratio_incremental_over_full": _med(inc_s) / _med(full_s)}
        self.results["llm"] = {"hash": h, "series": series, "ablation": abl, "summary": summary}
        self.target("llm-like: hash cost", "seconds checksums_many adds to crc32c alone over the state (one thread), "
                    "% of the median non-incremental save on local disk (all saves of the full series)",
                    summary["xxh3_added_pct_of_save"], 5, "<=", summary["xxh3_added_pct_of_save"] <= 5)
        for where, ab in ablation.items():
            self.target(f"llm-like: hash cost end to end, {where}", "median save seconds with XXH3 / crc32c only, "
                        "+%", ab["added_pct"], 5, "<=", ab["added_pct"] <= 5)
        # the later saves of a series are not alike (the last one also deletes the oldest checkpoint: keep=2),
        # so incremental and full are compared save by save: the k-th later saves of every series
        level = []
        for k in range(1, a.llm_saves + 1):
            i_k = [r["saves"][k]["seconds"] for r in series["incremental"]]
            f_k = [r["saves"][k]["seconds"] for r in series["full"]]
            spread = max(_spread(i_k)["spread_pct"], _spread(f_k)["spread_pct"]) / 100
            level.append({"later_save": k, "incremental": _spread(i_k), "full": _spread(f_k),
                          "ratio": _med(i_k) / _med(f_k), "noise": max(0.1, spread)})
        summary["level_by_save"] = level
        for lv in level:
            self.target(f"llm-like: incremental level, later save {lv['later_save']}",
                        f"median incremental / full seconds of the later save {lv['later_save']} of each series "
                        f"(level: within max(10%, the larger spread {100 * lv['noise']:.0f}%))",
                        lv["ratio"], 1 + lv["noise"], "<=", abs(lv["ratio"] - 1) <= lv["noise"])

    # ---- 4: cp

    def cp(self) -> None:
        a = self.args
        from benchmarks.targets import LocalTarget

        for d in ("cp-src", "cp-dst"):
            shutil.rmtree(os.path.join(self.workdir, d), ignore_errors=True)  # (a --workdir of an earlier run)
        src = LocalTarget(os.path.join(self.workdir, "cp-src"))
        src.start()
        dst: Any
        if a.smoke:
            dst = LocalTarget(os.path.join(self.workdir, "cp-dst"))
        else:
            dst = counting_target("gcs")
        dst.start()
        try:
            for variant in a.variants.split(","):
                threshold = None if variant == "default" else max(4096, int((1 << 20) * a.cp_scale))
                self.log(f"cp {variant}: 10 incremental finetune checkpoints at scale {a.cp_scale} on local disk")
                series = spawn({"phase": "series", "workload": "finetune", "scale": a.cp_scale, "saves": 10,
                                "dir": src.url(f"run-{variant}"), "incremental": True, "keep": None,
                                "pack_threshold": threshold})
                base = series["saves"][0]["bytes_written"]
                changed = series["changed_bytes"]
                new_bytes = sum(s["bytes_written"] for s in series["saves"])
                self.log(f"  written {[s['bytes_written'] for s in series['saves']]}")
                res = spawn({"phase": "copy", "src": src.url(f"run-{variant}"), "dst": dst.url(f"copy-{variant}"),
                             "dst_storage_options": dst.storage_options, "counts": getattr(dst, "counts", None),
                             "digest": series["digest"]})
                sent = res["proxy"]["up"] if res.get("proxy") is not None else res["dst_stats"]["bytes_written"]
                limit = 1.2 * (base + 10 * changed)
                self.log(f"  copy {res['seconds']:.2f} s, sent {sent}, limit {limit:.0f}, verified {res['verified']}")
                name = "cp" if variant == "default" else f"cp {variant}"
                self.results.setdefault("cp", {})[variant] = {
                    "source": src.describe(), "destination": dst.describe(), "scale": a.cp_scale,
                    "pack_threshold": threshold, "series": series, "copy": res, "base_bytes": base,
                    "changed_bytes": changed, "source_bytes_written_by_10_saves": new_bytes, "sent": sent,
                    "limit": limit}
                self.target(f"{name}: sent", "bytes sent to the destination by cloudckpt.copy of 10 checkpoints vs "
                            "1.2 x (first checkpoint + 10 x changed)", sent, limit, "<=", sent <= limit)
                if not a.smoke:
                    dst.cleanup("")
                shutil.rmtree(src.url(f"run-{variant}"), ignore_errors=True)
        finally:
            dst.stop()
            src.stop()


def markdown(doc: dict[str, Any]) -> str:
    """The tables of the docs section, from a results document."""
    lines: list[str] = []
    w = lines.append
    mb = 1e6
    ft = doc.get("finetune", {})
    if ft:
        w("| target | mode | first save s | later save s (median, min-max) | sent per later save MB | "
          "copied per later save MB | speedup |")
        w("|---|---|---|---|---|---|---|")
        for tname, d in ft.items():
            s = d.get("summary")
            if not s:
                continue
            for mode in ("full", "incremental"):
                ls = s["later_save_s"][mode]
                w(f"| {tname} | {mode} | {s['first_save_s'][mode]:.2f} | {ls['median']:.3f} ({ls['min']:.3f}-"
                  f"{ls['max']:.3f}, n={ls['n']}) | {s['sent_per_later_save'][mode] / mb:.1f} | "
                  f"{s['copied_per_later_save'][mode] / mb:.1f} | {s['speedup'] if mode == 'incremental' else 1:.1f}x |")
        w("")
        loc = ft.get("local", {}).get("summary", {}).get("disk")
        if loc:
            w(f"Disk (local, {loc['checkpoints']} checkpoints per run): incremental run {loc['incremental_dir'] / mb:.1f} MB "
              f"on disk ({loc['apparent_incremental_dir'] / mb:.1f} MB apparent), full run {loc['full_dir'] / mb:.1f} MB, "
              f"one full checkpoint {loc['one_full_checkpoint'] / mb:.1f} MB.")
            w("")
    ld = doc.get("loads", {})
    if ld:
        w("| target | cache | incremental load s (median, min-max) | full load s | ratio |")
        w("|---|---|---|---|---|")
        for key, summ in ld.items():
            if not key.endswith("_summary"):
                continue
            for cache, v in summ.items():
                i, f = v["incremental"], v["full"]
                w(f"| {key[:-8]} | {cache} | {i['median']:.3f} ({i['min']:.3f}-{i['max']:.3f}, n={i['n']}) | "
                  f"{f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}, n={f['n']}) | {v['ratio']:.2f} |")
        w("")
    llm = doc.get("llm", {}).get("summary")
    if llm:
        g = llm["hash_gbps"]
        fa, ff = llm["full_save_s_all"], llm["full_first_save_s"]
        w("| crc32c GB/s | XXH3-128 GB/s | checksums_many GB/s | full save GB/s (local) | checksums_many % of save | "
          "added by XXH3 % of save (of a first save) |")
        w("|---|---|---|---|---|---|")
        w(f"| {g['crc32c']:.1f} | {g['xxh3']:.1f} | {g['checksums_many']:.1f} | {llm['save_gbps_full']:.2f} (median "
          f"{fa['median']:.2f} s, {fa['min']:.2f}-{fa['max']:.2f}, n={fa['n']}) | {llm['checksums_many_pct_of_save']:.1f} | "
          f"{llm['xxh3_added_pct_of_save']:.1f} ({llm['xxh3_added_pct_of_first_save']:.1f}: median {ff['median']:.2f} s) |")
        w("")
        w("| where | save s with XXH3 (median, min-max) | save s, crc32c only | added |")
        w("|---|---|---|---|")
        for where, ab in llm.get("ablation", {}).items():
            a, b = ab["with_xxh3_s"], ab["crc32c_only_s"]
            w(f"| {where} | {a['median']:.3f} ({a['min']:.3f}-{a['max']:.3f}, n={a['n']}) | {b['median']:.3f} "
              f"({b['min']:.3f}-{b['max']:.3f}, n={b['n']}) | {ab['added_pct']:+.1f} % |")
        w("")
        w("| llm-like, local | full s (median, min-max) | incremental s, everything changed | ratio |")
        w("|---|---|---|---|")
        for lv in llm.get("level_by_save", []):
            f, i = lv["full"], lv["incremental"]
            w(f"| later save {lv['later_save']} | {f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}, n={f['n']}) | "
              f"{i['median']:.3f} ({i['min']:.3f}-{i['max']:.3f}, n={i['n']}) | {lv['ratio']:.3f} |")
        w("")
    for variant, cp in doc.get("cp", {}).items():
        w(f"cp, {variant} layout ({cp['source']} -> {cp['destination']}, scale {cp['scale']}): sent "
          f"{cp['sent'] / mb:.1f} MB in {cp['copy']['seconds']:.1f} s; limit {cp['limit'] / mb:.1f} MB = 1.2 x (first "
          f"checkpoint {cp['base_bytes'] / mb:.1f} MB + 10 x changed {cp['changed_bytes'] / mb:.2f} MB); the 10 "
          f"saves wrote {cp['source_bytes_written_by_10_saves'] / mb:.1f} MB; copied inside the destination "
          f"(deduplicated) {cp['copy']['report'].get('bytes_deduplicated', 0) / mb:.1f} MB.")
        w("")
    if doc.get("targets"):
        w("| target | measured | limit | met |")
        w("|---|---|---|---|")
        for t in doc["targets"]:
            w(f"| {t['name']}: {t['what']} | {t['value']:.4g} | {t['op']} {t['limit']:.4g} | "
              f"{'yes' if t['met'] else 'no'}{' (' + t['note'] + ')' if t['note'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1])
        return
    if argv[:1] == ["--serve-proxy"]:
        serve_proxy(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny scale on local + memory, checks, ~1 min")
    p.add_argument("--only", default="finetune,loads,llm,cp", help="sections: finetune,loads,llm,cp")
    p.add_argument("--targets", default="s3-lat,local", help="finetune targets (s3-lat, local, memory)")
    p.add_argument("--scale", type=float, default=1.0, help="finetune scale (1.0: ~1.06 GB)")
    p.add_argument("--variants", default="default,split",
                   help="finetune layouts: default (StoreOptions()), split (pack_threshold = 1 MiB x scale)")
    p.add_argument("--saves", type=int, default=3, help="later saves per series (K)")
    p.add_argument("--reps", type=int, default=1, help="series per mode and variant on s3-lat and memory")
    p.add_argument("--local-reps", type=int, default=3, help="series per mode and variant on local disk")
    p.add_argument("--load-reps", type=int, default=2)
    p.add_argument("--llm-scale", type=float, default=1.0)
    p.add_argument("--llm-reps", type=int, default=4)
    p.add_argument("--llm-saves", type=int, default=2)
    p.add_argument("--cp-scale", type=float, default=0.25)
    p.add_argument("--latency-ms", default="20,50")
    p.add_argument("--bandwidth-mbs", type=float, default=25.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep-files", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.scale, args.llm_scale, args.cp_scale = 0.01, 0.01, 0.01
        args.targets, args.reps, args.local_reps, args.load_reps, args.llm_reps = "local,memory", 1, 1, 1, 1
    out = args.out or (None if args.smoke else str(DEFAULT_OUT))
    from benchmarks.environment import machine, versions

    run = Run(args)
    sections = set(args.only.split(","))
    try:
        if "finetune" in sections or "loads" in sections:
            for tname in args.targets.split(","):
                if tname == "s3-lat":
                    from benchmarks.targets import moto_available

                    if not moto_available():
                        run.log("s3-lat: moto/s3fs not installed, skipped")
                        continue
                run.finetune(tname, with_loads="loads" in sections)
        if "llm" in sections:
            run.llm()
        if "cp" in sections:
            run.cp()
    finally:
        if not args.workdir and not args.keep_files:
            shutil.rmtree(run.workdir, ignore_errors=True)
    spec_doc = {"d_model": D_MODEL, "ffn": FFN, "layers": LAYERS, "vocab": VOCAB, "rank": RANK}
    doc = {"command": "python -m benchmarks.incremental " + " ".join(argv), "machine": machine(),
           "versions": versions(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": time.perf_counter() - run.t0, "args": vars(args), "finetune_model": spec_doc,
           **run.results, "targets": run.targets}
    if out:
        Path(out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = markdown(doc)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    if args.smoke:
        smoke_checks(doc)
        print("smoke ok")


def smoke_checks(doc: dict[str, Any]) -> None:
    """What ``--smoke`` asserts: every incremental later save sent fewer bytes than the full one of the same
    rank in the series (with ``split``, where the frozen tensors are objects of their own; the default layout
    packs every tensor of the tiny state with the adapters: there it must not send more), and copied the rest;
    every load (another process's, or memory://'s own) returned the saved state bit-exactly."""
    for name, d in doc.get("finetune", {}).items():
        inc, full = d["series"]["incremental"], d["series"]["full"]
        assert inc and full, name
        for r_inc, r_full in zip(inc, full, strict=True):
            for s_i, s_f in zip(r_inc["saves"][1:], r_full["saves"][1:], strict=True):
                if d["variant"] == "split":
                    assert _sent(s_i) < _sent(s_f) and s_i["bytes_copied"] > 0, (name, s_i, s_f)
                else:
                    assert _sent(s_i) <= _sent(s_f) * 1.01, (name, s_i, s_f)
                assert s_f["bytes_copied"] == 0, (name, s_f)
            if "verified" in r_inc:
                assert r_inc["verified"] is True and r_full["verified"] is True, name
    for name, loads in doc.get("loads", {}).items():
        if not name.endswith("_summary"):
            assert loads and all(r["verified"] is True for r in loads), name
    for variant, cp in doc.get("cp", {}).items():
        assert cp["copy"]["verified"] is True, variant


if __name__ == "__main__":
    main()
