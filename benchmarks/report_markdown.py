"""docs/benchmarks.md from the records of ``benchmarks.run``: every section of the page, in order.

Text between ``<!-- keep:NAME -->`` and ``<!-- /keep:NAME -->`` in an existing markdown file is carried over into
the regenerated one (hand-written analysis).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from benchmarks.aggregate import (
    CACHE_TEXT,
    CACHES,
    FRESH,
    MB,
    Key,
    aggregate,
    fmt_mb,
    lib_order,
    med,
    num,
    order_in,
    workload_order,
)
from benchmarks.comparisons import headline, verdict
from benchmarks.environment import machine, read_text, versions
from benchmarks.libs import LIBS
from benchmarks.targets import TARGETS
from benchmarks.workloads import WORKLOADS

Rows = dict[Key, dict[str, Any]]
Emit = Callable[[str], None]  # appends one block of the page

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
    text = read_text(path)
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- keep:(\w+) -->.*?<!-- /keep:\1 -->", text, re.S)}


def _cell(r: dict[str, Any] | None, labels: list[str]) -> str:
    """``save / load (label 1) / load (label 2) ...`` MB/s."""
    if r is None:
        return ""
    bad = "fails" if r.get("errors") else "-"
    if r.get("save_mbs") is None and not r["loads"] and r.get("errors"):
        return "fails"
    parts = [num(r["save_mbs"]) if r.get("save_mbs") is not None else bad]
    for c in labels:
        d = r["loads"].get(c)
        parts.append(num(d["load_mbs"]) if d and d.get("load_mbs") is not None else bad)
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


def render_markdown(path: str, records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Write the report of ``records`` (``runs``: the metadata of the runs that made them) to ``path``."""
    rows = aggregate(records)
    keep = _keep_blocks(path)
    out: list[str] = []
    w = out.append
    descs = _header(w, rows, runs, keep)
    _save_load_tables(w, rows, descs)
    _first_load_tables(w, rows)
    _ttfc_tables(w, rows)
    _details_table(w, rows)
    _scaling_tables(w, rows)
    w("## Against the issue's targets (computed from the numbers above)\n")
    w(verdict(rows))
    if "profiling" in keep:
        w(keep["profiling"] + "\n")
    for name, block in keep.items():  # any other hand-written section (e.g. the framework integrations)
        if name not in ("analysis", "profiling"):
            w(block + "\n")
    _failures(w, rows, runs)
    w("## Peers\n")
    for lib in LIBS.values():
        w(f"* **{lib.name}** ({lib.label}): {lib.note or '-'}")
    w("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def _header(w: Emit, rows: Rows, runs: list[dict[str, Any]], keep: dict[str, str]) -> dict[str, str]:
    """Title, machine, versions, commands, headline, analysis and method; returns the targets' descriptions."""
    m = machine()
    v = versions()
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
    return descs


def _save_load_tables(w: Emit, rows: Rows, descs: dict[str, str]) -> None:
    main_wls = [wl for wl in WORKLOADS]
    combos = sorted({(k[0], k[2]) for k in rows if k[1] in main_wls}, key=lambda x: (order_in(x[0], TARGETS), x[1]))
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


def _first_load_tables(w: Emit, rows: Rows) -> None:
    # first load of a new process: seconds
    fl = sorted({(k[0], k[2]) for k, r in rows.items() if any(c in FRESH for c in r["loads"])},
                key=lambda x: (order_in(x[0], TARGETS), x[1]))
    if fl:
        w("## First load of a new process: cold and warm, seconds (median)\n")
        w("**First load = process start -> state in memory**, timed from the parent's clock right before it starts "
          "the process: interpreter start + `imports` (numpy and what a user imports for the library) + `open + read` "
          "(the library's first call, lazy imports and client creation included). No warm-up: nothing was imported "
          "or called before. MB/s = payload / first load. Lower seconds are better.\n")
    for t, sc in fl:
        keys = sorted([k for k, r in rows.items() if k[0] == t and k[2] == sc and any(c in FRESH for c in r["loads"])],
                      key=lambda k: (workload_order(k[1]), lib_order(k[3])))
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
                cells += [num(d.get("first_s"), 3), num(d.get("first_mbs")), num(d.get("import_s"), 3), num(d.get("load_s"), 3)]
            start = med([d.get("startup_s") for c, d in r["loads"].items() if c in FRESH])
            name = f"**{k[3]}**" if k[3] == "cloudckpt" else k[3]
            w(f"| {k[1]} | {name} | " + " | ".join(cells) + f" | {num(start, 3)} |")
        w("")


def _ttfc_tables(w: Emit, rows: Rows) -> None:
    # time to the first committed checkpoint
    tt = sorted({(k[0], k[2]) for k, r in rows.items() if r.get("ttfc_s")}, key=lambda x: (order_in(x[0], TARGETS), x[1]))
    if tt:
        w("## Time to the first committed checkpoint of a new process, seconds (median)\n")
        w("A new process imports numpy and the library, creates its client and saves the workload once: **timed from "
          "process start until that save is committed** (made durable on local disk; the save call returned on an "
          "object store). Generating the state (and torch.from_numpy) in between is not counted. `first save` is the "
          "save call of that process (client creation and lazy imports included); `steady save` is the save table's "
          "figure (library imported and warm). Lower is better.\n")
    for t, sc in tt:
        keys = sorted([k for k, r in rows.items() if k[0] == t and k[2] == sc and r.get("ttfc_s")],
                      key=lambda k: (workload_order(k[1]), lib_order(k[3])))
        w(f"### {t}, scale {sc:g}: time to first checkpoint\n")
        _measured_by(w, _commands(rows, keys))
        w("| workload | library | first checkpoint s | process start s | imports s | first save s | steady save s | "
          "requests |")
        w("|---|---|---|---|---|---|---|---|")
        for k in keys:
            r = rows[k]
            name = f"**{k[3]}**" if k[3] == "cloudckpt" else k[3]
            w(f"| {k[1]} | {name} | {num(r.get('ttfc_s'), 3)} | {num(r.get('ttfc_startup_s'), 3)} | "
              f"{num(r.get('ttfc_import_s'), 3)} | {num(r.get('ttfc_save_s'), 3)} | {num(r.get('save_s'), 3)} | "
              f"{num(r.get('ttfc_requests'))} |")
        w("")


def _details_table(w: Emit, rows: Rows) -> None:
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
        for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (order_in(kv[0][0], TARGETS), workload_order(kv[0][1]), kv[0][2], lib_order(kv[0][3]))):
            client = ""
            if r.get("client_save"):
                client = f"{r['client_save'].get('requests')}/{(r.get('client_load') or {}).get('requests', '-')}"
            req_s = _req(r, "save")
            req_l = _req(r, "load")
            w(f"| {t} | {wl} | {sc:g} | {lib} | {num(r.get('save_mbs'))} | {_lf(r)} | {req_s} | {req_l} | "
              f"{num(r.get('objects'))} | {fmt_mb(r.get('save_rss_delta'))} | {fmt_mb(r.get('load_rss_delta'))} | "
              f"{num(r.get('block_s'), 3)} | {num(r.get('copy_s'), 3)} | {num(r.get('async_mbs'))} | {client} |")
        w("")


def _scaling_tables(w: Emit, rows: Rows) -> None:
    """Scaling with the tensor count, and the 16 GiB state."""
    # scaling
    scal = sorted({k for k in rows if k[1].startswith("count-")}, key=lambda k: (order_in(k[0], TARGETS), k[2], lib_order(k[3]), workload_order(k[1])))
    if scal:
        w("## Scaling with tensor count (fixed total bytes)\n")
        w("Load = open + read in a new process, measured as named in brackets.\n")
        w("| target | scale | library | tensors | MB | save MB/s | load MB/s | save ms/tensor | load ms/tensor | objects |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for k in scal:
            r = rows[k]
            n = r["ntensors"] or 1
            w(f"| {k[0]} | {k[2]:g} | {k[3]} | {n:,} | {r['nbytes'] / MB:,.0f} | {num(r.get('save_mbs'))} | {_lf(r)} | "
              f"{num((r.get('save_s') or 0) * 1000 / n, 3)} | {num((r.get('load_s') or 0) * 1000 / n, 3)} | {num(r.get('objects'))} |")
        w("")
    huge = [k for k in rows if k[1] == "huge"]
    if huge:
        w("## 16 GiB state\n")
        for k in sorted(huge):
            r = rows[k]
            w(f"* {k[0]} {k[3]} scale {k[2]:g}: save {num(r.get('save_mbs'))} MB/s, load {_lf(r)} MB/s, "
              f"save dRSS {fmt_mb(r.get('save_rss_delta'))} MB, load dRSS {fmt_mb(r.get('load_rss_delta'))} MB; "
              f"errors: {'; '.join(r['errors']) or 'none'}")
        w("")


def _failures(w: Emit, rows: Rows, runs: list[dict[str, Any]]) -> None:
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



def _lf(r: dict[str, Any]) -> str:
    """The row's primary load MB/s with the way it was measured."""
    if r.get("load_mbs") is None:
        return "-"
    return f"{num(r['load_mbs'])} ({r['load_cache']})"


def _req(r: dict[str, Any], phase: str) -> str:
    n = r.get(f"{phase}_requests")
    if n is None:
        return "-"
    by = r.get(f"{phase}_requests_by") or {}
    detail = " ".join(f"{k}{v}" for k, v in sorted(by.items()))
    return f"{n:,.0f} ({detail})" if detail else f"{n:,.0f}"

