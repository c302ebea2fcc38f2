"""One measurement of ``benchmarks/incremental.py`` in a new process: ``python -m benchmarks.incremental_child '<json>'``.

Phases (``"phase"`` of the spec): ``series`` (a manager, its saves, each
save's seconds, bytes written and copied, the proxy's counts), ``load`` (a
new process's first load, its digest checked), ``hash`` (checksum GB/s),
``copy`` (``cloudckpt.copy`` of a directory), ``copyprobe`` (what one
server-side copy costs against a write), ``ablation`` (saves with and
without the XXH3). The result is printed as one line ``RESULT <json>``;
:func:`spawn` runs one and returns it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.incremental_proxy import counts_between, read_counts, settled_counts
from benchmarks.incremental_workload import arrays_of, make_workload, mutate, state_digest

ROOT = Path(__file__).resolve().parent.parent


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
    bufs = [memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for a in arrays_of(tree)]
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


def spawn(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one phase in a new process; its result."""
    spec = {**spec, "t_spawn": time.clock_gettime(time.CLOCK_MONOTONIC)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.incremental_child", json.dumps(spec)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"{spec['phase']} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")


if __name__ == "__main__":
    child_main(sys.argv[1])
