"""Aggregate benchmark records; print tables; merge results JSON; render docs/benchmarks.md.

Regenerate the markdown from a results file without running anything:

    python -m benchmarks.report --results benchmarks/results.json --markdown docs/benchmarks.md

Text between ``<!-- keep:NAME -->`` and ``<!-- /keep:NAME -->`` in an existing
markdown file is carried over into the regenerated one (hand-written analysis).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections import defaultdict
from typing import Any

from benchmarks.libs import BASELINES, LIBS
from benchmarks.targets import TARGETS
from benchmarks.workloads import WORKLOADS

Key = tuple[str, str, float, str]  # target, workload, scale, lib
MB = 1e6


def _med(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# How each load was measured (the record's "cache"), in the order the tables show them.
CACHES = ("cold", "warm", "fresh-client", "in-process", "not-cold", "not-warm", "legacy")
FRESH = ("cold", "warm", "fresh-client", "not-cold", "not-warm")  # loads of a new process, imports timed
CACHE_TEXT = {
    "cold": "cold: a new process; every file of the checkpoint evicted from the page cache first "
            "(POSIX_FADV_DONTNEED after os.sync(); 0 resident pages checked with mincore and fincore)",
    "warm": "warm: a new process; every page of the checkpoint in the page cache (read once first, checked)",
    "fresh-client": "a new process with a new client (object store: moto serves every object from its memory, so "
                    "there is no server-side cold state; no connection, credential or region is cached)",
    "in-process": "memory://: the same process that saved (its store lives there), library imported and "
                  "warmed up by the save: not a new process's load",
    "not-cold": "meant to be cold, but the eviction failed or could not be checked: NOT a cold figure",
    "not-warm": "meant to be warm, but not every page was resident",
    "legacy": "older harness: a new process, but library imports before the timer and a page cache warm from "
              "the save (not re-measured since)",
}
LOAD_PRIMARY = ("cold", "fresh-client", "in-process", "legacy", "warm", "not-cold", "not-warm")


def load_cache(r: dict[str, Any]) -> str:
    """How a load record was measured (see CACHES)."""
    if r["phase"] == "saveload":
        return "in-process"
    return r.get("cache") or "legacy"


def aggregate(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["target"], r["workload"], float(r["scale"]), r["lib"])].append(r)
    rows: dict[Key, dict[str, Any]] = {}
    for key, recs in groups.items():
        ok = [r for r in recs if not r.get("error")]
        errors = sorted({r["error"].splitlines()[0][:300] for r in recs if r.get("error")})
        nbytes = recs[0]["nbytes"]
        row: dict[str, Any] = {"nbytes": nbytes, "ntensors": recs[0].get("ntensors"), "errors": errors,
                               "commands": sorted({r["command"] for r in recs if r.get("command")}),
                               "cache_errors": sorted({f"{r.get('cache')}: {r['cache_error'][:200]}"
                                                       for r in recs if r.get("cache_error")})}
        saves = [r for r in ok if r["phase"] in ("save", "saveload")]
        loads = [r for r in ok if r["phase"] in ("load", "saveload")]
        asyncs = [r for r in ok if r["phase"] == "async"]
        firsts = [r for r in ok if r["phase"] == "first-save"]
        row["reps_ok"] = len(saves)
        for name, rs, field in (("save", saves, "save_s"), ("async", asyncs, "async_s")):
            _summarize(row, name, rs, field, nbytes)
        # loads, by how they were measured
        row["loads"] = {}
        for cache in CACHES:
            rs = [r for r in loads if load_cache(r) == cache]
            if not rs:
                continue
            d: dict[str, Any] = {"n": len(rs)}
            _summarize(d, "load", rs, "load_s", nbytes)
            if cache in FRESH:
                _summarize(d, "first", rs, "first_load_s", nbytes)
                d["import_s"] = _med([r.get("import_s") for r in rs])
                d["startup_s"] = _med([r.get("startup_s") for r in rs])
            row["loads"][cache] = d
        primary = next((c for c in LOAD_PRIMARY if c in row["loads"]), None)
        row["load_cache"] = primary
        for f in ("load_s", "load_mbs", "load_all_s", "load_rss_delta", "load_rss_peak"):
            row[f] = row["loads"][primary][f] if primary else None
        # time to the first committed checkpoint of a new process
        if firsts:
            row["ttfc_s"] = _med([r.get("ttfc_s") for r in firsts])
            row["ttfc_all_s"] = [round(r["ttfc_s"], 4) for r in firsts if r.get("ttfc_s") is not None]
            row["ttfc_startup_s"] = _med([r.get("startup_s") for r in firsts])
            row["ttfc_import_s"] = _med([r.get("import_s") for r in firsts])
            row["ttfc_save_s"] = _med([r.get("save_s") for r in firsts])
            row["ttfc_requests"] = _med([r["requests"]["total"] for r in firsts if r.get("requests")])
        row["block_s"] = _med([r.get("block_s") for r in asyncs])
        row["copy_s"] = _med([r.get("copy_s") for r in asyncs])
        for name, phase in (("save", "save"), ("load", "load"), ("async", "async")):
            reqs = [r["requests"] for r in recs if r["phase"] == phase and r.get("requests") and not r.get("error")]
            if reqs:
                row[f"{name}_requests"] = _med([q["total"] for q in reqs])
                row[f"{name}_requests_by"] = {k: v for k, v in reqs[0].items() if k != "total"}
        crs = [r.get("client_requests_save") for r in saves if r.get("client_requests_save")]
        if crs:
            row["client_save"] = crs[0]
        crl = [r.get("client_requests_load") for r in loads if r.get("client_requests_load")]
        if crl:
            row["client_load"] = crl[0]
        objs = [r.get("objects") for r in recs if r.get("objects") is not None and r["phase"] != "first-save"]
        if objs:
            row["objects"] = objs[0]
            row["stored_bytes"] = next((r.get("stored_bytes") for r in recs if r.get("stored_bytes") is not None), None)
        rows[key] = row
    return rows


def _summarize(row: dict[str, Any], name: str, rs: list[dict[str, Any]], field: str, nbytes: int) -> None:
    s = _med([r.get(field) for r in rs])
    row[f"{name}_s"] = s
    row[f"{name}_mbs"] = nbytes / MB / s if s else None
    row[f"{name}_all_s"] = [round(r[field], 4) for r in rs if r.get(field) is not None]
    prefix = "load" if name == "first" else name
    row[f"{name}_rss_delta"] = _med([r.get(f"{prefix}_rss_delta") for r in rs])
    row[f"{name}_rss_peak"] = _med([r.get(f"{prefix}_rss_peak") for r in rs])


def _f(x: float | None, nd: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:,.0f}"


_SHORT = {"cold": "cold", "warm": "warm", "fresh-client": "fresh", "in-process": "in-proc", "not-cold": "NOT-cold",
          "not-warm": "NOT-warm", "legacy": "legacy"}


def print_table(rows: dict[Key, dict[str, Any]]) -> None:
    """Console summary. load MB/s = open + read; first load s = process start -> state in memory (imports
    included); TTFC s = process start -> first checkpoint committed. Both in new processes."""
    print(f"{'target':7s} {'workload':12s} {'scale':>5s} {'lib':14s} {'save MB/s':>9s}  {'load MB/s (open+read)':28s} "
          f"{'first load s (process start->state)':36s} {'TTFC s':>7s} {'req s/l':>11s} {'objs':>6s} "
          f"{'dRSS s/l MB':>12s}  errors")
    for (t, w, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), kv[0][1], kv[0][2], _lib_order(kv[0][3]))):
        req = f"{_f(r.get('save_requests'))}/{_f(r.get('load_requests'))}" if r.get("save_requests") is not None else "-"
        rss = f"{_mb(r.get('save_rss_delta'))}/{_mb(r.get('load_rss_delta'))}"
        loads = " ".join(f"{_SHORT[c]} {_f(d.get('load_mbs'))}" for c, d in r["loads"].items()) or "-"
        firsts = " ".join(f"{_SHORT[c]} {_f(d.get('first_s'), 3)}" for c, d in r["loads"].items() if c in FRESH) or "-"
        print(f"{t:7s} {w:12s} {sc:5g} {lib:14s} {_f(r.get('save_mbs')):>9s}  {loads:28s} {firsts:36s} "
              f"{_f(r.get('ttfc_s'), 3):>7s} {req:>11s} {_f(r.get('objects')):>6s} {rss:>12s}  "
              f"{'; '.join(r['errors'] + r['cache_errors'])[:150]}")


def _order(x: str, seq: tuple[str, ...]) -> int:
    return seq.index(x) if x in seq else len(seq)


def _lib_order(name: str) -> int:
    names = list(LIBS)
    return names.index(name) if name in names else len(names)


def _wl_order(w: str) -> tuple[int, int]:
    if w in WORKLOADS:
        return (0, WORKLOADS.index(w))
    if w.startswith("count-"):
        return (1, int(w.split("-")[1]))
    return (2, 0)


def update_results(path: str, records: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Merge ``records`` into the JSON file at ``path``: a new measurement of a
    (lib, workload, target, scale) replaces the old ones (its first-save records apart)."""
    old: dict[str, Any] = {"records": [], "runs": []}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    def key(r: dict[str, Any]) -> tuple[str, str, str, float, bool]:
        # the time to the first checkpoint is replaced only by a run that measured it (not by --no-first-save)
        return r["lib"], r["workload"], r["target"], float(r["scale"]), r["phase"] == "first-save"

    new_keys = {key(r) for r in records}
    kept = [r for r in old["records"] if key(r) not in new_keys]
    merged = kept + records
    runs = [*old.get("runs", []), meta]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"records": merged, "runs": runs}, f, indent=1)
    return merged, runs


# ---------------------------------------------------------------- environment


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    mem = re.search(r"MemTotal:\s+(\d+)", _read("/proc/meminfo"))
    cpu = re.search(r"model name\s*:\s*(.+)", _read("/proc/cpuinfo"))
    disk = "?"
    try:
        src = subprocess.run(["df", "--output=source,fstype", "/tmp"], capture_output=True, text=True, timeout=5).stdout.split("\n")[1].split()
        dev = os.path.basename(src[0])
        rot = _read(f"/sys/block/{re.sub(r'[0-9]+$', '', dev)}/queue/rotational").strip()
        kind = f"sysfs rotational={rot or '?'}"
        disk = f"{src[0]} ({src[1]}, {kind})"
    except Exception:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "ram": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "?",
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "disk": disk,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


VERSIONED = ["cloudckpt", "numpy", "zarr", "fsspec", "s3fs", "gcsfs", "crc32c", "moto", "torch", "safetensors",
             "jax", "jaxlib", "orbax-checkpoint", "tensorstore", "torchsnapshot"]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------- markdown

STATIC_METHOD = """\
## Method

* **Install the peers** (optional extra `bench`, never a runtime dependency):
  `pip install torch==2.13.0 safetensors jax jaxlib orbax-checkpoint torchsnapshot py-spy` (torch 2.13.0 pinned: it
  resolves to the CPU wheel here; an unpinned torch pulls a multi-GB CUDA build). A peer that is not installed is
  skipped with a note. moto and fake-gcs-server come from the `test` extra.
* **One command** runs it: `python -m benchmarks.run --workload W --target T --reps N [--scale S] [--peers all]
  [--out results.json] [--markdown docs/benchmarks.md]`; every table below prints the commands that measured it.
  `--loads cold` or `--loads warm` keeps one of the two local loads (default both), `--no-first-save` skips the
  time to the first checkpoint. `python -m benchmarks.report` regenerates this page from a results file.
* **Workloads** (deterministic, `benchmarks/workloads.py`; float32 standard-normal, i.e. incompressible like weights):
  `small-many` 500 tensors log-spaced 256 B .. 4 MiB (218 MB); `large-few` 8 x 128 MiB (1,074 MB);
  `llm-like` GPT-2-shaped (24 layers, d_model 448, vocab 50257) + Adam `exp_avg`/`exp_avg_sq`/`step` per
  parameter: 1,168 tensors, 969 MB; `count-N` N equal tensors of 256 MiB in total; `huge` 16 GiB.
  `--scale` multiplies every tensor's leading axis (bytes), never the tensor count.
* **Every measurement is a fresh process** (`benchmarks/child.py`). Repetitions are interleaved (rep 1 of every
  library, then rep 2 with the order rotated, ...); within a library's turn: save, the loads, the first save.
  Numbers are **medians**; MB/s = tensor payload (10^6 bytes) / wall seconds.
* **Save** (the save tables): generate the state (untimed), import the library (untimed), save (timed, made
  durable), exit. This is the steady state of a job that saves every N steps.
* **Loads are the first load of a new process, without warm-up**: nothing of the library is imported before the
  timer starts. Each load reports `imports` (numpy + what a user imports: `import cloudckpt`, `import torch`, ...),
  `open + read` (the library's first call until the state is in memory: lazy imports, client creation, reading,
  checking) and `first load` = **process start -> state in memory** (interpreter start + imports + open + read,
  timed from the parent's clock right before it starts the process). The "load MB/s" of the save/load tables is
  payload / open + read; the first-load table gives the seconds and payload / first load. Each load's digest
  (crc32c of every tensor) is checked against the saver's. Importing the harness's own modules is not counted.
  cloudckpt runs from the source tree: `benchmarks.run` compiles it to bytecode first, as `pip install` does for
  an installed package (the peers), since on a machine with `PYTHONDONTWRITEBYTECODE` set every new process would
  otherwise compile cloudckpt's source again.
* **Cold and warm, on local disk, both measured every repetition** (in alternating order): **cold** = every file
  of the checkpoint evicted from the page cache (`os.sync()`, `fdatasync` and `posix_fadvise(POSIX_FADV_DONTNEED)`
  on each file), then checked: 0 resident pages by `mincore(2)` and by util-linux `fincore`. An eviction that fails
  or cannot be checked is recorded as **not-cold** and listed under Failures, never averaged in as cold. **warm** =
  every file read once first, all pages checked resident. Only the checkpoint is evicted: Python and the libraries'
  own files stay in the page cache (as for a job restarted on the same host), and the VM's disk may have a host-side
  cache below the guest's page cache. **Object stores** have no page cache to drop: their one load is a new process
  with a new client (no connection, credential or region cached); moto serves every object from its memory, so
  there is no server-side cold state to reproduce. **memory://** is loaded in the process that saved it (its store
  lives there): those loads are not a new process's and are labelled `in-process`.
* **Time to the first committed checkpoint** (`first-save`): a new process imports numpy and the library, creates
  its client and saves once; timed from process start until the save is committed (durable on local disk), minus
  the untimed generation of the state (and its torch.from_numpy) in between. Local disk and object stores.
* **Durability on local disk**: a save is timed until its data is on disk. cloudckpt (fsync of every object and
  directory before the create-only manifest), the raw baselines (fsync each file + the directory) and torch DCP
  (`FileSystemWriter(sync_files=True)`, its default) fsync themselves; np.savez, safetensors, torch.save, orbax,
  torchsnapshot and naive zarr do not, so the harness fsyncs every file and directory they wrote inside the timed
  region.
* **Object stores**: single-file formats (np.savez, safetensors, torch.save) serialize into memory and upload one
  object with the same fsspec filesystem cloudckpt uses (s3fs / gcsfs), loads fetch and deserialize; torch DCP uses
  `FsspecWriter/FsspecReader`; torchsnapshot its own S3 plugin (aiobotocore, `AWS_ENDPOINT_URL`); orbax is tried
  with the URL as is. **Requests are counted at the server**: moto's access log (s3), the proxy's log (gcs, s3-lat).
* **s3-lat** is a real network shaper on loopback (`benchmarks/proxy.py`): an asyncio TCP proxy between client and
  moto that delays each HTTP request by a seeded uniform 20-50 ms and caps every connection at 25 MB/s per direction.
* **async**: `save()` blocking time with `CheckpointManager(async_save=True)` (cloudckpt), `dcp.async_save`,
  orbax's async `StandardCheckpointer.save`, `torchsnapshot.Snapshot.async_take`; "copy" is one plain in-memory copy
  of the same state in the same process (the issue's reference: block <= 1.5 x copy).
* **RSS**: the peak-RSS watermark is reset (`/proc/self/clear_refs`) right before the timed operation (a load's
  open + read); the tables give *peak minus RSS at the start of the operation* (the state is already resident on
  save; nothing on load), so interpreter and imported libraries (torch, jax) do not count.
* The machine is shared and noisy: only ratios within one run mean much.
"""


def _keep_blocks(path: str) -> dict[str, str]:
    text = _read(path)
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- keep:(\w+) -->.*?<!-- /keep:\1 -->", text, re.S)}


def _cell(r: dict[str, Any] | None, labels: list[str]) -> str:
    """``save / load (label 1) / load (label 2) ...`` MB/s."""
    if r is None:
        return ""
    bad = "fails" if r.get("errors") else "-"
    if r.get("save_mbs") is None and not r["loads"] and r.get("errors"):
        return "fails"
    parts = [_f(r["save_mbs"]) if r.get("save_mbs") is not None else bad]
    for c in labels:
        d = r["loads"].get(c)
        parts.append(_f(d["load_mbs"]) if d and d.get("load_mbs") is not None else bad)
    return " / ".join(parts)


def _labels(rows: dict[Key, dict[str, Any]], keys: list[Key], only: tuple[str, ...] = CACHES) -> list[str]:
    """The load labels present among ``keys``, in table order."""
    have = {c for k in keys for c in rows[k]["loads"]}
    return [c for c in CACHES if c in have and c in only]


def _commands(rows: dict[Key, dict[str, Any]], keys: list[Key], field: str = "commands") -> list[str]:
    seen: list[str] = []
    for k in keys:
        for c in rows[k].get(field) or []:
            if c not in seen:
                seen.append(c)
    return seen


def _measured_by(w: Any, cmds: list[str]) -> None:
    if cmds:
        w("Measured by:\n")
        for c in cmds:
            w(f"    {c}")
        w("")


def _sec_ratio(ck: float | None, peer: float | None) -> str:
    """Speed of cloudckpt relative to the peer, from seconds (lower is better)."""
    if not ck or not peer:
        return "-"
    x = peer / ck
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def _mbs_ratio(ck: float | None, peer: float | None) -> str:
    if not ck or not peer:
        return "-"
    x = ck / peer
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def _best_peer(rows: dict[Key, dict[str, Any]], t: str, wl: str, sc: float, get: Any, lower: bool,
               libs: tuple[str, ...] | None = None) -> tuple[str, float | None]:
    """(name, value) of the best library other than cloudckpt (peers by default; ``libs`` to choose)."""
    names = libs if libs is not None else tuple(n for n in LIBS if n != "cloudckpt" and n not in BASELINES)
    cand = [(get(rows[(t, wl, sc, n)]), n) for n in names if (t, wl, sc, n) in rows]
    cand = [(v, n) for v, n in cand if v]
    if not cand:
        return "-", None
    v, n = min(cand) if lower else max(cand)
    return n, v


def _load(r: dict[str, Any] | None, cache: str, field: str) -> float | None:
    if not r:
        return None
    d = r["loads"].get(cache)
    return d.get(field) if d else None


def headline(rows: dict[Key, dict[str, Any]]) -> list[str]:
    """The page's headline numbers, each naming the figure it is (computed from the tables)."""
    lines: list[str] = []
    w = lines.append

    def per_workload(t: str, sc: float, get: Any, lower: bool, fmt: Any) -> str:
        parts = []
        for wl in WORKLOADS:
            r = rows.get((t, wl, sc, "cloudckpt"))
            if not r or not get(r):
                continue
            p, v = _best_peer(rows, t, wl, sc, get, lower)
            rel = (_sec_ratio if lower else _mbs_ratio)(get(r), v)
            parts.append(f"{wl} {fmt(get(r))} vs {p} {fmt(v)} ({rel})" if v else f"{wl} {fmt(get(r))} (no peer)")
        return "; ".join(parts)

    def sec(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} s"

    def mbs(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f} MB/s"

    def scales(t: str, pred: Any) -> list[float]:
        return sorted({k[2] for k, r in rows.items() if k[0] == t and k[3] == "cloudckpt" and k[1] in WORKLOADS and pred(r)})

    for sc in scales("local", lambda r: "cold" in r["loads"] or "warm" in r["loads"])[-1:]:
        w(f"* **Cold first load of a new process, local disk, scale {sc:g}** (process start -> state in memory: "
          "interpreter, imports, open + read; the checkpoint's pages evicted from the page cache, checked), cloudckpt "
          "vs the best peer: " + per_workload("local", sc, lambda r: _load(r, "cold", "first_s"), True, sec) + ".")
        w(f"* **Warm first load of a new process, local disk, scale {sc:g}** (the same, every page of the checkpoint "
          "in the page cache): " + per_workload("local", sc, lambda r: _load(r, "warm", "first_s"), True, sec) + ".")
        w(f"* **Cold load throughput, local disk, scale {sc:g}** (open + read only, imports excluded, new process, "
          "evicted page cache): " + per_workload("local", sc, lambda r: _load(r, "cold", "load_mbs"), False, mbs) + ".")
        w(f"* **Warm load throughput, local disk, scale {sc:g}** (open + read only, new process, pages cached): "
          + per_workload("local", sc, lambda r: _load(r, "warm", "load_mbs"), False, mbs) + ".")
    for t in ("local", "s3", "gcs", "s3-lat"):
        for sc in scales(t, lambda r: r.get("ttfc_s"))[-1:]:
            w(f"* **Time to the first committed checkpoint of a new process, {t}, scale {sc:g}** (process start -> "
              "imports -> client -> first save committed): " + per_workload(t, sc, lambda r: r.get("ttfc_s"), True, sec) + ".")
    for t in ("s3",):
        for sc in scales(t, lambda r: "fresh-client" in r["loads"])[-1:]:
            w(f"* **First load of a new process, {t}, scale {sc:g}** (process start -> state in memory, new client): "
              + per_workload(t, sc, lambda r: _load(r, "fresh-client", "first_s"), True, sec) + ".")
    legacy = sorted({(k[0], k[2]) for k, r in rows.items() if "legacy" in r["loads"]}, key=lambda x: (_order(x[0], TARGETS), x[1]))
    if legacy:
        w("* **Loads marked `legacy`** (" + ", ".join(f"{t} scale {sc:g}" for t, sc in legacy) + ") are not first loads "
          "of a new process: the library was imported before the timer and the checkpoint was in the page cache "
          "from the save. They are kept apart from the cold and warm figures; re-run those tables to replace them.")
    for sc in scales("local", lambda r: r.get("save_mbs"))[-1:]:
        w(f"* **Steady-state save throughput, local disk, scale {sc:g}** (library imported before the timer, save "
          "made durable): " + per_workload("local", sc, lambda r: r.get("save_mbs"), False, mbs) + ".")
    return lines


def render_markdown(path: str, records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    rows = aggregate(records)
    keep = _keep_blocks(path)
    m = machine()
    v = versions()
    out: list[str] = []
    w = out.append
    w("# Benchmarks: cloudckpt against the libraries users would pick instead\n")
    w("<!-- Generated by `python -m benchmarks.run ... --markdown` / `python -m benchmarks.report`. "
      "Edit only inside keep blocks; everything else is regenerated. -->\n")
    w(f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')}. Machine: {m['nproc']} cores ({m['cpu']}), {m['ram']} RAM, "
      f"disk {m['disk']}, Linux {m['kernel']}, Python {m['python']}. The machine was shared with other engineers' "
      "test runs while this was measured.\n")
    w("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".\n")
    w("Commands that produced these numbers (latest measurement of each library x workload x target x scale wins):\n")
    seen = set()
    for r in runs:
        if r["command"] not in seen:
            seen.add(r["command"])
            w(f"    {r['command']}")
    w("")
    descs: dict[str, str] = {}
    for r in runs:
        descs.update(r.get("target_descriptions", {}))
    head = headline(rows)
    if head:
        w("## Headline numbers (computed from the tables below; each says which figure it is)\n")
        w("\n".join(head) + "\n")
        w("\"x faster / slower\" is cloudckpt's speed relative to the best peer's for that figure (raw baselines "
          "not counted as peers).\n")
    if "analysis" in keep:
        w(keep["analysis"] + "\n")
    w(STATIC_METHOD)

    main_wls = [wl for wl in WORKLOADS]
    combos = sorted({(k[0], k[2]) for k in rows if k[1] in main_wls}, key=lambda x: (_order(x[0], TARGETS), x[1]))
    if combos:
        w("## Save / load MB/s (median)\n")
        w("Cells: `save / load` MB/s of tensor payload, one load column per way it was measured (named in each "
          "table); higher is better. Save = steady state (library imported before the timer). Load = open + read in "
          "a **new process** (imports are not in this figure but in the first-load table below; lazy imports and "
          "client creation are). Raw rows are the limit of the same run.\n")
    for t, sc in combos:
        wls = [wl for wl in main_wls if any((t, wl, sc, lib) in rows for lib in LIBS)]
        keys = [k for k in rows if k[0] == t and k[2] == sc and k[1] in wls]
        labels = _labels(rows, keys)
        w(f"### {t}, scale {sc:g}\n")
        if t in descs:
            w(f"{descs[t]}.\n")
        sizes = ", ".join(f"{wl} {rows[next(k for k in rows if k[:3] == (t, wl, sc))]['nbytes'] / MB:,.0f} MB" for wl in wls)
        w(f"Bytes: {sizes}.\n")
        w("Cells: `save / " + " / ".join(f"{c} load" for c in labels) + "` MB/s. "
          + " ".join(f"*{CACHE_TEXT[c][0].upper() + CACHE_TEXT[c][1:]}.*" for c in labels) + "\n")
        _measured_by(w, _commands(rows, keys))
        w("| library | " + " | ".join(wls) + " |")
        w("|---|" + "---|" * len(wls))
        for lib in LIBS:
            if not any((t, wl, sc, lib) in rows for wl in wls):
                continue
            name = f"**{lib}**" if lib == "cloudckpt" else lib
            w(f"| {name} | " + " | ".join(_cell(rows.get((t, wl, sc, lib)), labels) for wl in wls) + " |")
        w("")

    # first load of a new process: seconds
    fl = sorted({(k[0], k[2]) for k, r in rows.items() if any(c in FRESH for c in r["loads"])},
                key=lambda x: (_order(x[0], TARGETS), x[1]))
    if fl:
        w("## First load of a new process: cold and warm, seconds (median)\n")
        w("**First load = process start -> state in memory**, timed from the parent's clock right before it starts "
          "the process: interpreter start + `imports` (numpy and what a user imports for the library) + `open + read` "
          "(the library's first call, lazy imports and client creation included). No warm-up: nothing was imported "
          "or called before. MB/s = payload / first load. Lower seconds are better.\n")
    for t, sc in fl:
        keys = sorted([k for k, r in rows.items() if k[0] == t and k[2] == sc and any(c in FRESH for c in r["loads"])],
                      key=lambda k: (_wl_order(k[1]), _lib_order(k[3])))
        labels = _labels(rows, keys, FRESH)
        w(f"### {t}, scale {sc:g}: first load\n")
        w(" ".join(f"*{CACHE_TEXT[c][0].upper() + CACHE_TEXT[c][1:]}.*" for c in labels) + "\n")
        _measured_by(w, _commands(rows, keys))
        cols = [f"{c}: {x}" for c in labels for x in ("first load s", "MB/s", "imports s", "open + read s")]
        w("| workload | library | " + " | ".join(cols) + " | process start s |")
        w("|---|---|" + "---|" * (len(cols) + 1))
        for k in keys:
            r = rows[k]
            cells = []
            for c in labels:
                d = r["loads"].get(c) or {}
                cells += [_f(d.get("first_s"), 3), _f(d.get("first_mbs")), _f(d.get("import_s"), 3), _f(d.get("load_s"), 3)]
            start = _med([d.get("startup_s") for c, d in r["loads"].items() if c in FRESH])
            name = f"**{k[3]}**" if k[3] == "cloudckpt" else k[3]
            w(f"| {k[1]} | {name} | " + " | ".join(cells) + f" | {_f(start, 3)} |")
        w("")

    # time to the first committed checkpoint
    tt = sorted({(k[0], k[2]) for k, r in rows.items() if r.get("ttfc_s")}, key=lambda x: (_order(x[0], TARGETS), x[1]))
    if tt:
        w("## Time to the first committed checkpoint of a new process, seconds (median)\n")
        w("A new process imports numpy and the library, creates its client and saves the workload once: **timed from "
          "process start until that save is committed** (made durable on local disk; the save call returned on an "
          "object store). Generating the state (and torch.from_numpy) in between is not counted. `first save` is the "
          "save call of that process (client creation and lazy imports included); `steady save` is the save table's "
          "figure (library imported and warm). Lower is better.\n")
    for t, sc in tt:
        keys = sorted([k for k, r in rows.items() if k[0] == t and k[2] == sc and r.get("ttfc_s")],
                      key=lambda k: (_wl_order(k[1]), _lib_order(k[3])))
        w(f"### {t}, scale {sc:g}: time to first checkpoint\n")
        _measured_by(w, _commands(rows, keys))
        w("| workload | library | first checkpoint s | process start s | imports s | first save s | steady save s | "
          "requests |")
        w("|---|---|---|---|---|---|---|---|")
        for k in keys:
            r = rows[k]
            name = f"**{k[3]}**" if k[3] == "cloudckpt" else k[3]
            w(f"| {k[1]} | {name} | {_f(r.get('ttfc_s'), 3)} | {_f(r.get('ttfc_startup_s'), 3)} | "
              f"{_f(r.get('ttfc_import_s'), 3)} | {_f(r.get('ttfc_save_s'), 3)} | {_f(r.get('save_s'), 3)} | "
              f"{_f(r.get('ttfc_requests'))} |")
        w("")

    # details
    if rows:
        w("## Details: requests, objects, memory, async\n")
        w("Requests are counted at the server (s3, gcs, s3-lat); for cloudckpt the client-side count of its storage "
          "layer is given for every target (`client`). dRSS = peak RSS during the operation minus RSS when it started, "
          "MB (save: the state is already resident; load: the loaded state counts). `block` = seconds `save()` blocks "
          "with async save; `copy` = one in-memory copy of the state. Load MB/s and load dRSS are of the load named in "
          "brackets (open + read).\n")
        w("| target | workload | scale | library | save MB/s | load MB/s | save req | load req | objects | "
          "save dRSS | load dRSS | async block s | copy s | async total MB/s | client req save/load |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), _wl_order(kv[0][1]), kv[0][2], _lib_order(kv[0][3]))):
            client = ""
            if r.get("client_save"):
                client = f"{r['client_save'].get('requests')}/{(r.get('client_load') or {}).get('requests', '-')}"
            req_s = _req(r, "save")
            req_l = _req(r, "load")
            w(f"| {t} | {wl} | {sc:g} | {lib} | {_f(r.get('save_mbs'))} | {_lf(r)} | {req_s} | {req_l} | "
              f"{_f(r.get('objects'))} | {_mb(r.get('save_rss_delta'))} | {_mb(r.get('load_rss_delta'))} | "
              f"{_f(r.get('block_s'), 3)} | {_f(r.get('copy_s'), 3)} | {_f(r.get('async_mbs'))} | {client} |")
        w("")

    # scaling
    scal = sorted({k for k in rows if k[1].startswith("count-")}, key=lambda k: (_order(k[0], TARGETS), k[2], _lib_order(k[3]), _wl_order(k[1])))
    if scal:
        w("## Scaling with tensor count (fixed total bytes)\n")
        w("Load = open + read in a new process, measured as named in brackets.\n")
        w("| target | scale | library | tensors | MB | save MB/s | load MB/s | save ms/tensor | load ms/tensor | objects |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for k in scal:
            r = rows[k]
            n = r["ntensors"] or 1
            w(f"| {k[0]} | {k[2]:g} | {k[3]} | {n:,} | {r['nbytes'] / MB:,.0f} | {_f(r.get('save_mbs'))} | {_lf(r)} | "
              f"{_f((r.get('save_s') or 0) * 1000 / n, 3)} | {_f((r.get('load_s') or 0) * 1000 / n, 3)} | {_f(r.get('objects'))} |")
        w("")
    huge = [k for k in rows if k[1] == "huge"]
    if huge:
        w("## 16 GiB state\n")
        for k in sorted(huge):
            r = rows[k]
            w(f"* {k[0]} {k[3]} scale {k[2]:g}: save {_f(r.get('save_mbs'))} MB/s, load {_lf(r)} MB/s, "
              f"save dRSS {_mb(r.get('save_rss_delta'))} MB, load dRSS {_mb(r.get('load_rss_delta'))} MB; "
              f"errors: {'; '.join(r['errors']) or 'none'}")
        w("")

    w("## Against the issue's targets (computed from the numbers above)\n")
    w(verdict(rows))
    if "profiling" in keep:
        w(keep["profiling"] + "\n")

    w("## Failures and skipped peers\n")
    fails = sorted({(k[3], k[0], re.sub(r"[\w.]+-r\d+-\d+(-async)?", "<ckpt>", e)) for k, r in rows.items() for e in r["errors"]})
    if fails:
        for lib, t, e in fails:
            w(f"* {lib} on {t}: `{e[:300]}`")
    not_cold = sorted({(k[3], k[0], k[1], k[2], e) for k, r in rows.items() for e in r["cache_errors"]})
    for lib, t, wl, sc, e in not_cold:
        w(f"* {lib} on {t}, {wl} scale {sc:g}: a load not measured as intended, reported under its own label "
          f"(not averaged in): `{e}`")
        fails.append((lib, t, e))
    notes = sorted({n for r in runs for n in r.get("notes", [])})
    notes += [f"{lib.name}: not run on {', '.join(t for t in TARGETS if t not in lib.targets)} (no support for that target)"
              for lib in LIBS.values() if set(TARGETS) - set(lib.targets)]
    for n in notes:
        w(f"* {n}")
    if not fails and not notes:
        w("* none")
    w("")
    w("## Peers\n")
    for lib in LIBS.values():
        w(f"* **{lib.name}** ({lib.label}): {lib.note or '-'}")
    w("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def _lf(r: dict[str, Any]) -> str:
    """The row's primary load MB/s with the way it was measured."""
    if r.get("load_mbs") is None:
        return "-"
    return f"{_f(r['load_mbs'])} ({r['load_cache']})"


def _req(r: dict[str, Any], phase: str) -> str:
    n = r.get(f"{phase}_requests")
    if n is None:
        return "-"
    by = r.get(f"{phase}_requests_by") or {}
    detail = " ".join(f"{k}{v}" for k, v in sorted(by.items()))
    return f"{n:,.0f} ({detail})" if detail else f"{n:,.0f}"


def verdict(rows: dict[Key, dict[str, Any]]) -> str:
    lines: list[str] = []
    w = lines.append
    w("Every figure is named: *save* = steady state; *load MB/s* = open + read in a new process; *first load* = "
      "process start -> state in memory in a new process (imports included); *first checkpoint* = process start -> "
      "first save committed. cold / warm / fresh-client / in-process as in Method. \"x faster / slower\" = "
      "cloudckpt's speed relative to the best peer's (or the raw limit's) for that figure.\n")
    w("| target | workload | scale | figure | cloudckpt | best peer | cloudckpt vs best peer | raw limit | "
      "cloudckpt vs raw limit |")
    w("|---|---|---|---|---|---|---|---|---|")
    for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), _wl_order(kv[0][1]), kv[0][2])):
        if lib != "cloudckpt" or wl not in WORKLOADS:
            continue
        figures: list[tuple[str, Any, bool, str]] = [("save MB/s", lambda x: x.get("save_mbs"), False, "")]
        for c in r["loads"]:
            figures.append((f"load MB/s, {c}", lambda x, c=c: _load(x, c, "load_mbs"), False, ""))
        for c in r["loads"]:
            if c in FRESH:
                figures.append((f"first load s, {c}", lambda x, c=c: _load(x, c, "first_s"), True, "s"))
        if r.get("ttfc_s"):
            figures.append(("first checkpoint s", lambda x: x.get("ttfc_s"), True, "s"))
        for label, get, lower, unit in figures:
            mine = get(r)
            if mine is None:
                continue
            p, v = _best_peer(rows, t, wl, sc, get, lower)
            rp, rv = _best_peer(rows, t, wl, sc, get, lower, BASELINES)
            ratio = _sec_ratio if lower else _mbs_ratio
            fmt = (lambda x: _f(x, 3)) if unit else _f
            w(f"| {t} | {wl} | {sc:g} | {label} | {fmt(mine)} | {p} {fmt(v)} | {ratio(mine, v)} | "
              f"{rp if rv else ''} {fmt(rv)} | {ratio(mine, rv)} |")
    w("")
    # other targets
    w("Other targets of the issue, cloudckpt rows only (no RSS targets for memory://, whose store lives in the process):\n")
    for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), _wl_order(kv[0][1]), kv[0][2])):
        if lib != "cloudckpt":
            continue
        facts = []
        if t in ("s3", "gcs", "s3-lat") and wl == "small-many":
            sreq, lreq = r.get("save_requests"), r.get("load_requests")
            ok = sreq is not None and lreq is not None and sreq <= 16 and lreq <= 16
            facts.append(f"requests save {_f(sreq)} / load {_f(lreq)} (target <= 16 each: {'met' if ok else 'NOT met'})")
        if t == "s3-lat":
            for ph in ("save", "load"):
                secs = r.get(f"{ph}_s")
                bw = max((o.get(f"{ph}_mbs") or 0) for k2, o in rows.items() if k2[:3] == (t, wl, sc))
                if secs and bw:
                    limit = 1.5 * r["nbytes"] / MB / bw + 6 * 0.035
                    facts.append(f"{ph} {secs:.2f} s vs 1.5 x bytes/bandwidth + 6 RTT = {limit:.2f} s with bandwidth = the best "
                                 f"{ph} MB/s of any library here ({bw:,.0f}) and RTT 35 ms ({'met' if secs <= limit else 'NOT met'})")
        if r.get("block_s") is not None and r.get("copy_s"):
            ratio_b = r["block_s"] / r["copy_s"]
            facts.append(f"async save() blocks {r['block_s']:.3f} s = {ratio_b:.2f}x one copy ({r['copy_s']:.3f} s; target <= 1.5x: "
                         f"{'met' if ratio_b <= 1.5 else 'NOT met'})")
        state = r["nbytes"]
        sd, ld, ad = r.get("save_rss_delta"), r.get("load_rss_delta"), r.get("async_rss_delta")
        if t == "memory":  # memory:// keeps the stored checkpoint inside the process: RSS counts it too
            sd = ld = ad = None
        if sd is not None:
            lim = 0.1 * state + 64 * 2**20
            facts.append(f"save extra RSS {sd / MB:,.0f} MB (target <= 10% + 64 MB = {lim / MB:,.0f} MB: {'met' if sd <= lim else 'NOT met'})")
        if ld is not None:
            lim = 1.1 * state + 64 * 2**20
            facts.append(f"load RSS {ld / MB:,.0f} MB ({r['load_cache']} load) for a {state / MB:,.0f} MB state "
                         f"(target <= {lim / MB:,.0f} MB: {'met' if ld <= lim else 'NOT met'})")
        if ad is not None:
            lim = 1.0 * state + 64 * 2**20
            facts.append(f"async extra RSS {ad / MB:,.0f} MB (target <= state + 64 MB = {lim / MB:,.0f} MB: {'met' if ad <= lim else 'NOT met'})")
        if facts:
            w(f"* {t} / {wl} / scale {sc:g}: " + "; ".join(facts) + ".")
    w("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description="Regenerate the benchmark report.")
    p.add_argument("--results", required=True)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    rows = aggregate(data["records"])
    print_table(rows)
    if args.markdown:
        render_markdown(args.markdown, data["records"], data.get("runs", []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
