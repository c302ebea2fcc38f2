"""docs/benchmarks-multihost.md from the multi-host records: every section of the page, in order.

Text between ``<!-- keep:NAME -->`` and ``<!-- /keep:NAME -->`` in an existing file is carried over."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.environment import machine, versions
from benchmarks.multihost_rank import dims, state_nbytes
from benchmarks.multihost_results import MB, MH_TARGETS, aggregate, fmt_mb, num, row_order

Rows = dict[tuple[Any, ...], dict[str, Any]]
Emit = Callable[[str], None]  # appends one block of the page

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
    return f"{num(r['mbs'])} ({num(r['seconds'], 2)} s)"


def render_markdown(path: str, records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Write the report of ``records`` (``runs``: the metadata of the runs that made them) to ``path``."""
    rows = aggregate(records)
    keep = _keep_blocks(path)
    out: list[str] = []
    w = out.append
    _header(w, records, runs, keep)
    _throughput_tables(w, rows, runs)
    _details_table(w, rows)
    _failures(w, rows)
    with open(path, "w") as f:
        f.write("\n".join(out))


def _header(w: Emit, records: list[dict[str, Any]], runs: list[dict[str, Any]], keep: dict[str, str]) -> None:
    """Title, machine, versions, commands, analysis and method."""
    m = machine()
    v = versions()
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


def _throughput_tables(w: Emit, rows: Rows, runs: list[dict[str, Any]]) -> None:
    """Save, load and resharding load MB/s, one table per target and scale."""
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


def _details_table(w: Emit, rows: Rows) -> None:
    """Requests, objects, memory and per-rank time of every row."""
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
        for key in sorted(rows, key=row_order):
            t, sc, lib, ph, n, wd = key
            r = rows[key]
            req = " / ".join(str(x) for x in r.get("req_per_rank") or []) or "-"
            by = _by_kind(r, t, lib)
            own = " / ".join(num(x, 2) for x in r.get("own_s") or []) or "-"
            ver = {True: "yes", False: "**NO**"}.get(r.get("verified"), "")  # type: ignore[arg-type]
            nm = str(n) if ph == "save" else f"{n} -> {wd}"
            w(f"| {t} | {sc:g} | {lib} | {ph} | {nm} | {req} | {by} | {num(r.get('server_requests'))} | "
              f"{num(r.get('objects'))} | {fmt_mb(r.get('rss_delta_max'))} | {own} | {ver} |")
        w("")


def _failures(w: Emit, rows: Rows) -> None:
    errs = sorted({(k[0], k[2], k[3], k[4], k[5], e) for k, r in rows.items() for e in r["errors"]})
    w("## Failures\n")
    if errs:
        for t, lib, ph, n, wd, e in errs:
            w(f"* {lib} {ph} on {t}, {n} -> {wd} ranks: `{e[:300]}`")
    else:
        w("* none: every load restored every tensor bit-exactly.")
    w("")



def _by_kind(r: dict[str, Any], target: str, lib: str) -> str:
    per = r.get("requests_by_rank") or []
    if not per:
        return "-"
    req = per[0] or {}
    which = "http" if target.startswith("s3") else ("ops" if lib.startswith("cloudckpt") else "opens")
    d = req.get(which) or {}
    return " ".join(f"{k} {v}" for k, v in d.items() if k != "total") or "-"
