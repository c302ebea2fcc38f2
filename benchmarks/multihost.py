"""Multi-host benchmark: cloudckpt against torch DCP by world size: ``python -m benchmarks.multihost --help``.

Examples:
    python -m benchmarks.multihost --nproc 1,2,4 --target local,s3 --scale 0.25 --reps 2 \\
        --out benchmarks/results_multihost.json --markdown docs/benchmarks-multihost.md
    python -m benchmarks.multihost --nproc 2,4 --target s3-lat --scale 0.25 --reps 1
    python -m benchmarks.multihost --smoke            # CI: tiny state, 1 and 2 ranks, local, < 90 s
    python -m benchmarks.multihost --markdown docs/benchmarks-multihost.md --results benchmarks/results_multihost.json

The state is an FSDP2-sharded model (embedding, 6 blocks of LayerNorm + 4
Linear layers, head; ``benchmarks/multihost_rank.py``) and its AdamW state
after one step: ~328 MB at ``--scale 1``, 308 tensors at every scale. For
each target, repetition, world size N and library, in fresh processes:

* **save** on N gloo ranks (CPU): wall time from a barrier before to a
  barrier after the save, made durable on local disk;
* **load** on N ranks into a freshly built and sharded model and a fresh
  optimizer (other initial values), with the same barriers;
* **reshard** load on M != N ranks (``--reshard``; default: the next world
  size of ``--nproc``, cyclically: 1->2, 2->4, 4->1);

and after every load, each tensor of the restored model and optimizer state,
gathered whole, must equal the saved one (crc32c of the bytes): a wrong
result is reported as an error, never as a speed. Repetitions are
interleaved (rep 1 of every world size and library, then rep 2 with the
library order rotated, ...); numbers are medians. MB/s = bytes of the whole
state (all ranks together, 10^6 bytes per MB) / wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

from benchmarks.multihost_rank import dims, state_nbytes
from benchmarks.targets import ROOT, Target, make_target, moto_available

LIBS = ("cloudckpt", "dcp")
MH_TARGETS = ("local", "s3", "s3-lat")
PHASES = ("save", "load", "reshard")
MB = 1e6
SMOKE_SCALE = 0.01


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ starting ranks


class Zygote:
    """A process that imported torch/cloudckpt once and forks the ranks of each measurement."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.logdir = tempfile.mkdtemp(prefix="cloudckpt-mh-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.multihost_rank", "--zygote"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.path.join(self.logdir, "zygote.err"), "w"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"zygote did not start: {line!r}; see {self.logdir}/zygote.err")
        self.n = 0

    def run(self, spec: dict[str, Any], nproc: int, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        req = {"id": self.n, "spec": spec, "nproc": nproc, "env": env, "timeout": timeout, "logdir": self.logdir}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote died; see {self.logdir}/zygote.err")
        return list(json.loads(line)["ranks"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.logdir, ignore_errors=True)


def run_exec(spec: dict[str, Any], nproc: int, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Every rank a new interpreter, started by cloudckpt.testing.launch (like torchrun)."""
    from cloudckpt.testing.launch import launch

    env = {**env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = launch([sys.executable, "-m", "benchmarks.multihost_rank", json.dumps(spec)], nproc, env=env,
                 timeout=timeout, cwd=str(ROOT))
    return [{"rank": r.rank, "returncode": r.returncode, "lines": r.lines, "stderr": r.stderr} for r in out]


def rank_results(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Each rank's RESULT (in rank order) and the first error, if any."""
    results, error = [], None
    for r in raw:
        res = None
        for line in reversed(r["lines"]):
            if line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
                break
        if res is None:
            res = {"rank": r["rank"], "error": f"rank {r['rank']} exited {r['returncode']} without a result: "
                                                f"{(r.get('stderr') or '')[-1500:]}"}
        if res.get("error") and error is None:
            error = f"rank {res.get('rank')}: {res['error']}"
        results.append(res)
    return results, error


# ------------------------------------------------------------------ one measurement


def _diff(a: Counter[str] | None, b: Counter[str] | None) -> dict[str, int] | None:
    if a is None or b is None:
        return None
    d = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}
    d["total"] = sum(d.values())
    return d


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.zygote = None if args.exec else Zygote()

    def stop(self) -> None:
        if self.zygote:
            self.zygote.stop()

    def job(self, spec: dict[str, Any], nproc: int, target: Target) -> dict[str, Any]:
        """Run one phase on ``nproc`` ranks; a record with per-rank facts and server-side requests."""
        env = dict(target.child_env)
        load0 = os.getloadavg()[0]
        c0 = target.counter()
        t0 = time.perf_counter()
        if self.zygote:
            raw = self.zygote.run(spec, nproc, env, self.args.timeout)
        else:
            raw = run_exec(spec, nproc, env, self.args.timeout)
        job_s = time.perf_counter() - t0
        c1 = target.counter()
        ranks, error = rank_results(raw)
        rec: dict[str, Any] = {"job_s": job_s, "loadavg": [load0, os.getloadavg()[0]], "server_requests": _diff(c0, c1)}
        if error:
            rec["error"] = error
            rec["traceback"] = next((r.get("traceback") for r in ranks if r.get("traceback")), None)
            return rec
        rec["seconds"] = max(r["seconds"] for r in ranks)
        rec["digests"] = ranks[0].get("digests")
        rec["ranks"] = [{k: r.get(k) for k in ("rank", "seconds", "own_s", "rss_base", "rss_peak", "rss_delta",
                                                 "state_rss", "requests", "optim_init_s", "untimed_s")} for r in ranks]
        return rec

    def measure(self, lib: str, n: int, m: int | None, target: Target, rep: int) -> list[dict[str, Any]]:
        args = self.args
        nbytes, ntensors = state_nbytes(args.scale)
        key = f"mh-{lib}-n{n}-r{rep}-{int(time.time() * 1000) % 10**8}"
        url = target.url(key)
        common = {"lib": lib, "target": target.name, "url": url, "scale": args.scale,
                  "storage_options": target.storage_options, "collective_timeout": args.timeout}
        base = {"lib": lib, "target": target.name, "scale": args.scale, "rep": rep, "nbytes": nbytes,
                "ntensors": ntensors, "save_world": n, "command": args.command}
        records: list[dict[str, Any]] = []

        def profile(phase: str, world: int) -> str | None:
            if not args.profile_dir:
                return None
            os.makedirs(args.profile_dir, exist_ok=True)
            return os.path.join(args.profile_dir, f"{lib}-{target.name}-{phase}-n{n}-w{world}-r{rep}")

        try:
            save = self.job({**common, "phase": "save", "profile": profile("save", n)}, n, target)
            saved = save.pop("digests", None)
            rec = {**base, "phase": "save", "world": n, **save, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if "error" not in save:
                found = target.objects(url)
                if found:
                    rec["objects"], rec["stored_bytes"] = found
            records.append(rec)
            if "error" in save:
                return records
            loads = [("load", n)] + ([("reshard", m)] if m is not None and lib in args.reshard_libs else [])
            for phase, world in loads:
                if getattr(target, "cold", False):
                    target.drop_cache(url)  # type: ignore[attr-defined]
                got = self.job({**common, "phase": "load", "profile": profile(phase, world)}, world, target)
                loaded = got.pop("digests", None)
                rec = {**base, "phase": phase, "world": world, **got, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                if "error" not in got:
                    bad = sorted(k for k in set(saved or {}) | set(loaded or {})
                                 if (saved or {}).get(k) != (loaded or {}).get(k))
                    rec["verified"] = bool(saved) and not bad
                    rec["ntensors_checked"] = len(loaded or {})
                    if bad:
                        rec["error"] = (f"restored state differs from the saved one in {len(bad)} of "
                                        f"{len(saved or {})} tensors: {', '.join(bad[:5])}")
                records.append(rec)
        except Exception as exc:  # a target failure must not lose the other results
            records.append({**base, "phase": "save", "world": n, "error": f"harness: {type(exc).__name__}: {exc}"})
        finally:
            try:
                target.cleanup(url)
            except Exception as exc:
                _log(f"   cleanup of {url} failed: {exc}")
        return records


def reshard_plan(nprocs: list[int], spec: str) -> dict[int, int]:
    """Saved world size -> world size of the resharding load.

    Example:
        >>> reshard_plan([1, 2, 4], "auto")
        {1: 2, 2: 4, 4: 1}
        >>> reshard_plan([1, 2, 4], "4:2,2:4")
        {4: 2, 2: 4}
        >>> reshard_plan([4], "auto")
        {}
    """
    if spec == "none":
        return {}
    if spec == "auto":
        order = sorted(set(nprocs))
        if len(order) < 2:
            return {}
        return {n: order[(i + 1) % len(order)] for i, n in enumerate(order)}
    out = {}
    for part in spec.split(","):
        a, b = part.split(":")
        if int(a) == int(b):
            raise SystemExit(f"--reshard {part}: a resharding load needs another world size")
        out[int(a)] = int(b)
    return out


def _fmt(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return f"ERROR {rec['error'][:300]}"
    s = rec["seconds"]
    ranks = rec.get("ranks") or []
    req = "/".join(str(_req_total(r, rec["target"], rec["lib"])) for r in ranks)
    rss = max((r.get("rss_delta") or 0) for r in ranks) / MB
    extra = f" verified={rec['verified']}" if "verified" in rec else ""
    objs = f" objects {rec['objects']}" if rec.get("objects") is not None else ""
    srv = f" server {rec['server_requests']['total']}" if rec.get("server_requests") else ""
    return (f"{rec['nbytes'] / MB / s:8.1f} MB/s ({s:6.2f} s)  req/rank {req}{srv}{objs}  dRSS max {rss:.0f} MB"
            f"  load {rec['loadavg'][0]:.1f}  job {rec['job_s']:.0f} s{extra}")


def _req_total(rank: dict[str, Any], target: str, lib: str) -> int | None:
    """The request count of one rank shown in the tables: S3 API calls on S3 (both libraries),
    cloudckpt storage operations / DCP file opens on local disk."""
    req = rank.get("requests") or {}
    if target.startswith("s3"):
        return (req.get("http") or {}).get("total", 0)
    if lib == "cloudckpt":
        return (req.get("ops") or {}).get("total", 0)
    return (req.get("opens") or {}).get("total", 0)


# ------------------------------------------------------------------ results and report


def rec_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["target"], float(r["scale"]), r["lib"], r["phase"], r["save_world"], r["world"])


def update_results(path: str, records: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Merge into the JSON file: new measurements of a (target, scale, lib, phase, worlds) replace old ones."""
    old: dict[str, Any] = {"records": [], "runs": []}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    new = {rec_key(r) for r in records}
    merged = [r for r in old["records"] if rec_key(r) not in new] + records
    runs = [*old.get("runs", []), meta]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"records": merged, "runs": runs}, f, indent=1)
    return merged, runs


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[rec_key(r)].append(r)
    rows = {}
    for key, recs in groups.items():
        ok = [r for r in recs if not r.get("error")]
        row: dict[str, Any] = {"nbytes": recs[0]["nbytes"], "ntensors": recs[0]["ntensors"], "reps": len(recs),
                               "reps_ok": len(ok), "errors": sorted({r["error"].splitlines()[0][:300] for r in recs if r.get("error")})}
        row["seconds"] = _med([r["seconds"] for r in ok])
        row["all_s"] = [round(r["seconds"], 3) for r in ok]
        row["mbs"] = row["nbytes"] / MB / row["seconds"] if row["seconds"] else None
        if any("verified" in r for r in recs):
            row["verified"] = bool(ok) and all(r.get("verified") for r in ok) and len(ok) == len(recs)
        if ok:
            first = ok[0]
            t, lib = first["target"], first["lib"]
            row["req_per_rank"] = [_req_total(rk, t, lib) for rk in first["ranks"]]
            row["requests_by_rank"] = [rk.get("requests") for rk in first["ranks"]]
            row["server_requests"] = _med([(r.get("server_requests") or {}).get("total") for r in ok])
            row["server_by"] = first.get("server_requests")
            row["rss_delta_max"] = _med([max((rk.get("rss_delta") or 0) for rk in r["ranks"]) for r in ok])
            row["rss_peak_max"] = _med([max((rk.get("rss_peak") or 0) for rk in r["ranks"]) for r in ok])
            row["state_rss"] = _med([max((rk.get("state_rss") or 0) for rk in r["ranks"]) for r in ok])
            row["own_s"] = [_med([r["ranks"][i]["own_s"] for r in ok if i < len(r["ranks"])]) for i in range(len(first["ranks"]))]
            objs = [r.get("objects") for r in ok if r.get("objects") is not None]
            if objs:
                row["objects"] = objs[0]
                row["stored_bytes"] = next(r.get("stored_bytes") for r in ok if r.get("objects") is not None)
        rows[key] = row
    return rows


def print_table(rows: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    print(f"{'target':7s} {'scale':>5s} {'lib':9s} {'phase':8s} {'N->M':>6s} {'MB/s':>7s} {'s':>7s} {'req/rank':>16s} "
          f"{'server':>7s} {'objs':>5s} {'dRSS':>6s} verified  errors")
    for key in sorted(rows, key=_row_order):
        t, sc, lib, ph, n, w = key
        r = rows[key]
        req = "/".join(str(x) for x in r.get("req_per_rank") or [])
        nm = f"{n}" if ph == "save" else f"{n}->{w}"
        print(f"{t:7s} {sc:5g} {lib:9s} {ph:8s} {nm:>6s} {_f(r.get('mbs')):>7s} {_f(r.get('seconds'), 2):>7s} {req:>16s} "
              f"{_f(r.get('server_requests')):>7s} {_f(r.get('objects')):>5s} {_mb(r.get('rss_delta_max')):>6s} "
              f"{r.get('verified', '-')!s:8s}  {'; '.join(r['errors'])[:200]}")


def _row_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    t, sc, lib, ph, n, w = key
    return (MH_TARGETS.index(t) if t in MH_TARGETS else 9, sc, n, PHASES.index(ph), LIBS.index(lib) if lib in LIBS else 9, w)


def _f(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:,.0f}"


STATIC_METHOD = """\
## Method

* **State** (`benchmarks/multihost_rank.py`, deterministic): an LLM-like stack, with an embedding
  (vocab x d), 6 blocks of LayerNorm + `Linear(d, 3d)` + `Linear(d, d)` + LayerNorm + `Linear(d, 4d)` +
  `Linear(4d, d)`, a final LayerNorm and a `Linear(d, vocab)` head. Each block and the root are FSDP2
  `fully_shard`ed, so every parameter is a `DTensor` sharded on dim 0. AdamW state comes from one step on a
  fixed global batch that the ranks split. That is 77 parameters and 308 tensors (parameters, `exp_avg`,
  `exp_avg_sq`, a 0-d `step` per parameter), float32. `--scale 1` is d 512, vocab 8192 and 328 MB.
  `--scale` multiplies the bytes (the widths grow with its square root) and keeps the tensor count.
* **Ranks**: N processes on this machine with the gloo backend (CPU), one torch intra-op thread each (torchrun
  sets `OMP_NUM_THREADS=1`). Each measurement runs in new processes. By default a zygote process that has
  only imported torch, cloudckpt and s3fs forks them; with `--exec`, `cloudckpt.testing.launch` starts
  each rank as a new interpreter, as torchrun would. The zygote saves the 5-15 s that importing torch
  costs each rank on this loaded 2-core machine, and it changes no timed code.
* **Timed region**: on every rank, a barrier, then the save or load, then a barrier. The figure is the
  slowest rank's time between the two barriers. A save is
  `cloudckpt.Checkpoint(model=model, optimizer=opt).write(url)`, or, for torch DCP,
  `get_state_dict(model, opt)` + `dcp.save({"model": ..., "optim": ...})`. A load targets a freshly built
  and sharded model with other initial values. Its fresh optimizer gets its zero state (one zero-gradient
  step, via `get_state_dict`) before the timed region, the same way for both libraries; the time this takes is
  recorded as `optim_init_s`. The load is then `Checkpoint(...).read(url)`, or, for DCP, `get_state_dict`,
  `dcp.load` and `set_state_dict`. cloudckpt's gloo side group is created before the timed region (a training
  job has it from its first save).
* **Durability on local disk**: cloudckpt fsyncs every object and directory before its create-only
  manifest. DCP's `FileSystemWriter(sync_files=True)` (the default) fsyncs each file it writes and
  `.metadata.tmp` before renaming it to `.metadata`, but fsyncs **no directory**, so the new directory entries
  are not durable. The benchmark adds a barrier plus an fsync of the checkpoint directory and its parent on
  rank 0, inside DCP's timed region. On S3 a save is durable when its last PUT has returned, and DCP's
  `FsspecWriter` runs with `sync_files=False`. With the default `True`, DCP calls `os.sync()`, a machine-wide
  flush of dirty pages, after every file, because an s3fs file has no `fileno()`. On S3 that buys nothing.
* **Verification**: after every load, each tensor of the restored model and optimizer state is gathered
  whole (`full_tensor()`, untimed) and its crc32c is compared with the saved state's. A load that differs in
  any tensor is an error, and its time is not reported.
* **Requests per rank** (client side, inside the timed region): on S3, every S3 API call a rank makes
  (wrappers on `s3fs.S3FileSystem._call_s3` and `call_s3`, for both libraries). "server" is the total that moto's access
  log (s3) or the shaping proxy's log (s3-lat) counted, the same mechanism as the single-process
  benchmarks. The rank counts add up to it. On local disk, cloudckpt's storage-layer operations are counted with
  `cloudckpt.storage.add_global_hook` (one `write`/`read`/`head` = one file operation), and DCP's with the
  files it opens (`FileSystem.create_stream`; DCP then reads each tensor with a seek and a read of the open
  file).
* **RSS**: each rank resets its peak-RSS watermark (`/proc/self/clear_refs`) right before the first barrier.
  The figures are the largest over the ranks of *peak minus RSS at that moment*. The state (or, on load, the
  freshly built model and the optimizer's zero state) is already resident then.
* **Objects**: files (local) or objects (S3) under the checkpoint's URL after the save.
* **MB/s** = bytes of the whole state (all ranks together; 10^6 bytes per MB) / wall seconds. Repetitions
  are interleaved, and every figure is the median over them.
"""


def _keep_blocks(path: str) -> dict[str, str]:
    import re

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- keep:(\w+) -->.*?<!-- /keep:\1 -->", text, re.S)}


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("mbs") is None:
        return "fails" if r.get("errors") else ""
    return f"{_f(r['mbs'])} ({_f(r['seconds'], 2)} s)"


def render_markdown(path: str, records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    from benchmarks.environment import machine, versions

    rows = aggregate(records)
    keep = _keep_blocks(path)
    m = machine()
    v = versions()
    out: list[str] = []
    w = out.append
    w("# Multi-host benchmarks: cloudckpt and torch DCP by world size\n")
    w("<!-- Generated by `python -m benchmarks.multihost ... --markdown`. Edit only inside keep blocks; "
      "everything else is regenerated. -->\n")
    w("Save and load throughput of an FSDP2-sharded model plus its AdamW state on 1 to N ranks, next to "
      "torch.distributed.checkpoint (DCP), on the same state and storage. The requests each rank makes are counted too. "
      "Single-process comparisons with more libraries are on the [benchmarks page](benchmarks.md). "
      "How multi-rank saves work is in [multi-host and multi-device](multihost.md).\n")
    loads = [x for r in records for x in (r.get("loadavg") or [])]
    load_txt = (f" Load average (1 min) sampled before and after every measurement: median {statistics.median(loads):.1f}, "
                f"range {min(loads):.1f}-{max(loads):.1f}." if loads else "")
    w(f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')}. Machine: {m['nproc']} cores ({m['cpu']}), {m['ram']} RAM, "
      f"disk {m['disk']}, Linux {m['kernel']}, Python {m['python']}. The machine was shared with other engineers' "
      f"test runs while this was measured.{load_txt}\n")
    keep_v = ("cloudckpt", "torch", "numpy", "zarr", "fsspec", "s3fs", "crc32c", "moto")
    w("Versions: " + ", ".join(f"{k} {v[k]}" for k in keep_v if k in v) + ".\n")
    w("Commands that produced these numbers (the latest measurement of each target x scale x library x world size wins):\n")
    seen = set()
    for r in runs:
        if r["command"] not in seen:
            seen.add(r["command"])
            w(f"    {r['command']}")
    w("")
    if "analysis" in keep:
        w(keep["analysis"] + "\n")
    else:
        w("<!-- keep:analysis -->\n*(analysis to be written by hand)*\n<!-- /keep:analysis -->\n")
    w(STATIC_METHOD)

    combos = sorted({(k[0], k[1]) for k in rows}, key=lambda x: (MH_TARGETS.index(x[0]) if x[0] in MH_TARGETS else 9, x[1]))
    descs: dict[str, str] = {}
    for r in runs:
        descs.update(r.get("target_descriptions", {}))
    if combos:
        w("## Save and load throughput\n")
        w("MB/s of the whole state (wall seconds in parentheses); median of the repetitions. Load: into a freshly "
          "sharded model on the same number of ranks. Reshard: saved on N ranks, loaded on M.\n")
    for t, sc in combos:
        sub = {k: r for k, r in rows.items() if k[0] == t and k[1] == sc}
        nbytes = next(iter(sub.values()))["nbytes"]
        d = dims(sc)
        reps = max(r["reps"] for r in sub.values())
        w(f"### {t}, scale {sc:g}\n")
        if t in descs:
            w(f"{descs[t]}.\n")
        w(f"State: {nbytes / MB:,.0f} MB in {state_nbytes(sc)[1]} tensors (d {d['d']}, vocab {d['vocab']}, "
          f"{d['layers']} blocks); {reps} repetition(s).\n")
        worlds = sorted({k[4] for k in sub})
        w("| ranks | save cloudckpt | save DCP | DCP / cloudckpt time | load cloudckpt | load DCP | DCP / cloudckpt time |")
        w("|---|---|---|---|---|---|---|")
        for n in worlds:
            cells = []
            for ph in ("save", "load"):
                a, b = sub.get((t, sc, "cloudckpt", ph, n, n)), sub.get((t, sc, "dcp", ph, n, n))
                ratio = (f"{b['seconds'] / a['seconds']:.2f}x" if a and b and a.get("seconds") and b.get("seconds") else "-")
                cells += [_cell(a), _cell(b), ratio]
            w(f"| {n} | " + " | ".join(cells) + " |")
        w("")
        resh = sorted({(k[4], k[5]) for k in sub if k[3] == "reshard"})
        if resh:
            w("Resharding load (saved on N ranks, loaded on M):\n")
            w("| saved on N | loaded on M | cloudckpt | DCP | DCP / cloudckpt time |")
            w("|---|---|---|---|---|")
            for n, mm in resh:
                a, b = sub.get((t, sc, "cloudckpt", "reshard", n, mm)), sub.get((t, sc, "dcp", "reshard", n, mm))
                ratio = (f"{b['seconds'] / a['seconds']:.2f}x" if a and b and a.get("seconds") and b.get("seconds") else "-")
                w(f"| {n} | {mm} | {_cell(a)} | {_cell(b) or 'not run'} | {ratio} |")
            w("")

    if rows:
        w("## Requests, objects, memory, per-rank time\n")
        w("*Requests per rank* are listed rank 0 / rank 1 / ... On S3 they are S3 API calls counted in each rank. "
          "On local disk they are cloudckpt storage operations, or the files DCP opened. *Server* is the total at "
          "moto or the proxy (S3 only). *dRSS* is the largest over the ranks of peak RSS minus RSS at the start, in MB. "
          "*Own s* is each rank's time until its own save or load call returned, rank 0 / rank 1 / ... The rest, "
          "up to the wall time, is waiting at the final barrier for the slowest rank.\n")
        w("| target | scale | library | phase | ranks | requests per rank | by kind (rank 0) | server | objects | "
          "dRSS MB | own s per rank | verified |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key in sorted(rows, key=_row_order):
            t, sc, lib, ph, n, wd = key
            r = rows[key]
            req = " / ".join(str(x) for x in r.get("req_per_rank") or []) or "-"
            by = _by_kind(r, t, lib)
            own = " / ".join(_f(x, 2) for x in r.get("own_s") or []) or "-"
            ver = {True: "yes", False: "**NO**"}.get(r.get("verified"), "")  # type: ignore[arg-type]
            nm = str(n) if ph == "save" else f"{n} -> {wd}"
            w(f"| {t} | {sc:g} | {lib} | {ph} | {nm} | {req} | {by} | {_f(r.get('server_requests'))} | "
              f"{_f(r.get('objects'))} | {_mb(r.get('rss_delta_max'))} | {own} | {ver} |")
        w("")

    errs = sorted({(k[0], k[2], k[3], k[4], k[5], e) for k, r in rows.items() for e in r["errors"]})
    w("## Failures\n")
    if errs:
        for t, lib, ph, n, wd, e in errs:
            w(f"* {lib} {ph} on {t}, {n} -> {wd} ranks: `{e[:300]}`")
    else:
        w("* none: every load restored every tensor bit-exactly.")
    w("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def _by_kind(r: dict[str, Any], target: str, lib: str) -> str:
    per = r.get("requests_by_rank") or []
    if not per:
        return "-"
    req = per[0] or {}
    which = "http" if target.startswith("s3") else ("ops" if lib == "cloudckpt" else "opens")
    d = req.get(which) or {}
    return " ".join(f"{k} {v}" for k, v in d.items() if k != "total") or "-"


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multihost", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2,4", help="comma list of world sizes (default 1,2,4)")
    p.add_argument("--target", default="local", help=f"comma list of {', '.join(MH_TARGETS)} (default local)")
    p.add_argument("--libs", default=",".join(LIBS), help="comma list of cloudckpt, dcp (default both)")
    p.add_argument("--scale", type=float, default=1.0, help="state size: 1.0 = 328 MB of model + AdamW state")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--reshard", default="auto",
                   help="resharding loads: 'auto' (next world size of --nproc, cyclically), 'none', or 'N:M,...'")
    p.add_argument("--reshard-libs", default="cloudckpt,dcp", help="libraries that run the resharding load (default both)")
    p.add_argument("--exec", action="store_true",
                   help="start every rank as a new interpreter (cloudckpt.testing.launch) instead of forking it from a zygote")
    p.add_argument("--latency-ms", default="20,50", help="s3-lat: per-request latency range (default 20,50)")
    p.add_argument("--bandwidth-mbs", type=float, default=25.0, help="s3-lat: MB/s cap per connection (default 25)")
    p.add_argument("--workdir", default=None, help="local target directory (default: a new temp dir)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job (all ranks of one phase)")
    p.add_argument("--out", default=None, help="merge the records into this JSON file")
    p.add_argument("--results", default=None, help="with --markdown and no measurements: render from this JSON file")
    p.add_argument("--markdown", default=None, help="write the markdown report (from --out/--results, or this run)")
    p.add_argument("--profile-dir", default=None, help="cProfile every rank's timed region into this directory")
    p.add_argument("--smoke", action="store_true", help=f"CI: scale {SMOKE_SCALE}, ranks 1,2, local, 1 rep, resharding "
                   "loads of cloudckpt only; checks that every measurement ran and every load verified")
    args = p.parse_args(argv)
    args.command = "python -m benchmarks.multihost " + " ".join(argv if argv is not None else sys.argv[1:])

    if args.results and args.markdown and not args.out:
        with open(args.results) as f:
            data = json.load(f)
        print_table(aggregate(data["records"]))
        render_markdown(args.markdown, data["records"], data.get("runs", []))
        _log(f"wrote {args.markdown}")
        return 0

    if args.smoke:
        args.nproc, args.target, args.reps, args.scale = "1,2", "local", 1, SMOKE_SCALE
        args.reshard, args.reshard_libs = "auto", "cloudckpt"
    nprocs = [int(x) for x in args.nproc.split(",") if x.strip()]
    if not nprocs or min(nprocs) < 1:
        p.error("--nproc needs world sizes >= 1")
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    for t in targets:
        if t not in MH_TARGETS:
            p.error(f"unknown target {t!r}: choose from {', '.join(MH_TARGETS)}")
        if t != "local" and not moto_available():
            p.error(f"target {t} needs moto and s3fs")
    libs = [x.strip() for x in args.libs.split(",") if x.strip()]
    for lib in libs:
        if lib not in LIBS:
            p.error(f"unknown library {lib!r}: choose from {', '.join(LIBS)}")
    args.reshard_libs = [x.strip() for x in args.reshard_libs.split(",") if x.strip()]
    plan = reshard_plan(nprocs, args.reshard)
    state_nbytes(args.scale)  # validates

    records: list[dict[str, Any]] = []
    started = time.time()
    runner = Runner(args)
    descriptions: dict[str, str] = {}
    try:
        for tname in targets:
            target = make_target(tname, workdir=args.workdir, latency_ms=args.latency_ms, bandwidth_mbs=args.bandwidth_mbs)
            target.start()
            descriptions[tname] = target.describe()
            nb = state_nbytes(args.scale)[0]
            _log(f"== target {tname}: {target.describe()}; state {nb / MB:.1f} MB; ranks {nprocs}; reshard {plan or 'none'}")
            try:
                for rep in range(args.reps):
                    for n in nprocs:
                        order = libs[rep % len(libs):] + libs[: rep % len(libs)]
                        for lib in order:
                            for rec in runner.measure(lib, n, plan.get(n), target, rep):
                                records.append(rec)
                                nm = f"{rec['save_world']}" if rec["phase"] == "save" else f"{rec['save_world']}->{rec['world']}"
                                _log(f"   rep {rep} {lib:9s} {rec['phase']:7s} {nm:>5s} {_fmt(rec)}")
            finally:
                target.stop()
    finally:
        runner.stop()
    elapsed = time.time() - started

    rows = aggregate(records)
    print_table(rows)
    meta = {"command": args.command, "elapsed_s": elapsed, "targets": targets, "nproc": nprocs, "scale": args.scale,
            "reps": args.reps, "reshard": {str(k): v for k, v in plan.items()}, "exec": args.exec,
            "target_descriptions": {t: d for t, d in descriptions.items() if t != "local"},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    all_records, all_runs = records, [meta]
    if args.out:
        all_records, all_runs = update_results(args.out, records, meta)
        _log(f"wrote {args.out}")
    if args.markdown:
        render_markdown(args.markdown, all_records, all_runs)
        _log(f"wrote {args.markdown}")
    print(f"ran {len(records)} measurements in {elapsed:.1f} s")

    if args.smoke:
        errors = [r for r in records if r.get("error")]
        seen = {(r["lib"], r["phase"], r["save_world"], r["world"]) for r in records if not r.get("error")}
        expected = {(lib, "save", n, n) for lib in libs for n in nprocs} | {(lib, "load", n, n) for lib in libs for n in nprocs}
        expected |= {(lib, "reshard", n, m) for lib in libs if lib in args.reshard_libs for n, m in plan.items()}
        unverified = [r for r in records if r["phase"] != "save" and not r.get("verified")]
        if errors or expected - seen or unverified:
            for r in errors:
                print(f"SMOKE ERROR {r['lib']} {r['phase']} {r['save_world']}->{r['world']}: {r['error']}")
            for miss in sorted(expected - seen):
                print(f"SMOKE MISSING {miss}")
            return 1
        print("smoke ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
