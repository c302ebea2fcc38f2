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

from .libs import BASELINES, LIBS
from .targets import TARGETS
from .workloads import WORKLOADS

Key = tuple[str, str, float, str]  # target, workload, scale, lib
MB = 1e6


def _med(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["target"], r["workload"], float(r["scale"]), r["lib"])].append(r)
    rows: dict[Key, dict[str, Any]] = {}
    for key, recs in groups.items():
        ok = [r for r in recs if not r.get("error")]
        errors = sorted({r["error"].splitlines()[0][:300] for r in recs if r.get("error")})
        nbytes = recs[0]["nbytes"]
        row: dict[str, Any] = {"nbytes": nbytes, "ntensors": recs[0].get("ntensors"), "errors": errors}
        saves = [r for r in ok if r["phase"] in ("save", "saveload")]
        loads = [r for r in ok if r["phase"] in ("load", "saveload")]
        asyncs = [r for r in ok if r["phase"] == "async"]
        row["reps_ok"] = len(saves)
        for name, rs, field in (("save", saves, "save_s"), ("load", loads, "load_s"), ("async", asyncs, "async_s")):
            s = _med([r.get(field) for r in rs])
            row[f"{name}_s"] = s
            row[f"{name}_mbs"] = nbytes / MB / s if s else None
            row[f"{name}_all_s"] = [round(r[field], 4) for r in rs if r.get(field) is not None]
            row[f"{name}_rss_delta"] = _med([r.get(f"{name}_rss_delta") for r in rs])
            row[f"{name}_rss_peak"] = _med([r.get(f"{name}_rss_peak") for r in rs])
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
        objs = [r.get("objects") for r in recs if r.get("objects") is not None]
        if objs:
            row["objects"] = objs[0]
            row["stored_bytes"] = next((r.get("stored_bytes") for r in recs if r.get("stored_bytes") is not None), None)
        rows[key] = row
    return rows


def _f(x: float | None, nd: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:,.0f}"


def print_table(rows: dict[Key, dict[str, Any]]) -> None:
    print(f"{'target':7s} {'workload':12s} {'scale':>5s} {'lib':14s} {'save MB/s':>10s} {'load MB/s':>10s} "
          f"{'block s':>8s} {'copy s':>7s} {'req s/l':>11s} {'objs':>6s} {'dRSS s/l MB':>13s}  errors")
    for (t, w, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), kv[0][1], kv[0][2], _lib_order(kv[0][3]))):
        req = f"{_f(r.get('save_requests'))}/{_f(r.get('load_requests'))}" if r.get("save_requests") is not None else "-"
        rss = f"{_mb(r.get('save_rss_delta'))}/{_mb(r.get('load_rss_delta'))}"
        print(f"{t:7s} {w:12s} {sc:5g} {lib:14s} {_f(r.get('save_mbs')):>10s} {_f(r.get('load_mbs')):>10s} "
              f"{_f(r.get('block_s'), 3):>8s} {_f(r.get('copy_s'), 3):>7s} {req:>11s} {_f(r.get('objects')):>6s} {rss:>13s}  "
              f"{'; '.join(r['errors'])[:150]}")


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
    (lib, workload, target, scale) replaces the old ones."""
    old: dict[str, Any] = {"records": [], "runs": []}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    new_keys = {(r["lib"], r["workload"], r["target"], float(r["scale"])) for r in records}
    kept = [r for r in old["records"] if (r["lib"], r["workload"], r["target"], float(r["scale"])) not in new_keys]
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
  [--out results.json] [--markdown docs/benchmarks.md]`. `python -m benchmarks.report` regenerates this page from
  a results file.
* **Workloads** (deterministic, `benchmarks/workloads.py`; float32 standard-normal, i.e. incompressible like weights):
  `small-many` 500 tensors log-spaced 256 B .. 4 MiB (218 MB); `large-few` 8 x 128 MiB (1,074 MB);
  `llm-like` GPT-2-shaped (24 layers, d_model 448, vocab 50257) + Adam `exp_avg`/`exp_avg_sq`/`step` per
  parameter: 1,168 tensors, 969 MB; `count-N` N equal tensors of 256 MiB in total; `huge` 16 GiB.
  `--scale` multiplies every tensor's leading axis (bytes), never the tensor count.
* **Every measurement is a fresh process** (`benchmarks/child.py`): generate the state (untimed), save (timed),
  exit; a new process loads (timed) and checks a crc32c digest of every tensor against the saver's.
  Repetitions are interleaved (rep 1 of every library, then rep 2 with the order rotated, ...).
  Numbers are **medians**; MB/s = tensor payload (10^6 bytes) / wall seconds.
* **Durability on local disk**: a save is timed until its data is on disk. cloudckpt (fsync of every object and
  directory before the create-only manifest), the raw baselines (fsync each file + the directory) and torch DCP
  (`FileSystemWriter(sync_files=True)`, its default) fsync themselves; np.savez, safetensors, torch.save, orbax,
  torchsnapshot and naive zarr do not, so the harness fsyncs every file and directory they wrote inside the timed
  region. Loads run with a warm page cache (the file was just written) unless `--cold` (POSIX_FADV_DONTNEED on
  every file before the load).
* **Object stores**: single-file formats (np.savez, safetensors, torch.save) serialize into memory and upload one
  object with the same fsspec filesystem cloudckpt uses (s3fs / gcsfs), loads fetch and deserialize; torch DCP uses
  `FsspecWriter/FsspecReader`; torchsnapshot its own S3 plugin (aiobotocore, `AWS_ENDPOINT_URL`); orbax is tried
  with the URL as is. **Requests are counted at the server**: moto's access log (s3), the proxy's log (gcs, s3-lat).
* **s3-lat** is a real network shaper on loopback (`benchmarks/proxy.py`): an asyncio TCP proxy between client and
  moto that delays each HTTP request by a seeded uniform 20-50 ms and caps every connection at 25 MB/s per direction.
* **async**: `save()` blocking time with `CheckpointManager(async_save=True)` (cloudckpt), `dcp.async_save`,
  orbax's async `StandardCheckpointer.save`, `torchsnapshot.Snapshot.async_take`; "copy" is one plain in-memory copy
  of the same state in the same process (the issue's reference: block <= 1.5 x copy).
* **RSS**: the peak-RSS watermark is reset (`/proc/self/clear_refs`) right before the timed operation; the tables
  give *peak minus RSS at the start of the operation* (the state is already resident on save; nothing on load), so
  interpreter and imported libraries (torch, jax) do not count.
* The machine is shared and noisy: only ratios within one run mean much.
"""


def _keep_blocks(path: str) -> dict[str, str]:
    text = _read(path)
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- keep:(\w+) -->.*?<!-- /keep:\1 -->", text, re.S)}


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("save_mbs") is None and r.get("errors"):
        return "fails"
    s = f"{_f(r.get('save_mbs'))} / {_f(r.get('load_mbs'))}" if r.get("load_mbs") is not None else f"{_f(r.get('save_mbs'))} / fails"
    return s


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
    if "analysis" in keep:
        w(keep["analysis"] + "\n")
    w(STATIC_METHOD)

    main_wls = [wl for wl in WORKLOADS]
    combos = sorted({(k[0], k[2]) for k in rows if k[1] in main_wls}, key=lambda x: (_order(x[0], TARGETS), x[1]))
    if combos:
        w("## Save / load MB/s (median)\n")
        w("`save / load` MB/s of tensor payload; higher is better. Raw rows are the limit of the same run.\n")
    for t, sc in combos:
        wls = [wl for wl in main_wls if any((t, wl, sc, lib) in rows for lib in LIBS)]
        w(f"### {t}, scale {sc:g}\n")
        if t in descs:
            w(f"{descs[t]}.\n")
        sizes = ", ".join(f"{wl} {rows[next(k for k in rows if k[:3] == (t, wl, sc))]['nbytes'] / MB:,.0f} MB" for wl in wls)
        w(f"Bytes: {sizes}.\n")
        w("| library | " + " | ".join(wls) + " |")
        w("|---|" + "---|" * len(wls))
        for lib in LIBS:
            if not any((t, wl, sc, lib) in rows for wl in wls):
                continue
            name = f"**{lib}**" if lib == "cloudckpt" else lib
            w(f"| {name} | " + " | ".join(_cell(rows.get((t, wl, sc, lib))) for wl in wls) + " |")
        w("")

    # details
    if rows:
        w("## Details: requests, objects, memory, async\n")
        w("Requests are counted at the server (s3, gcs, s3-lat); for cloudckpt the client-side count of its storage "
          "layer is given for every target (`client`). dRSS = peak RSS during the operation minus RSS when it started, "
          "MB (save: the state is already resident; load: the loaded state counts). `block` = seconds `save()` blocks "
          "with async save; `copy` = one in-memory copy of the state.\n")
        w("| target | workload | scale | library | save MB/s | load MB/s | save req | load req | objects | "
          "save dRSS | load dRSS | async block s | copy s | async total MB/s | client req save/load |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), _wl_order(kv[0][1]), kv[0][2], _lib_order(kv[0][3]))):
            client = ""
            if r.get("client_save"):
                client = f"{r['client_save'].get('requests')}/{(r.get('client_load') or {}).get('requests', '-')}"
            req_s = _req(r, "save")
            req_l = _req(r, "load")
            w(f"| {t} | {wl} | {sc:g} | {lib} | {_f(r.get('save_mbs'))} | {_f(r.get('load_mbs'))} | {req_s} | {req_l} | "
              f"{_f(r.get('objects'))} | {_mb(r.get('save_rss_delta'))} | {_mb(r.get('load_rss_delta'))} | "
              f"{_f(r.get('block_s'), 3)} | {_f(r.get('copy_s'), 3)} | {_f(r.get('async_mbs'))} | {client} |")
        w("")

    # scaling
    scal = sorted({k for k in rows if k[1].startswith("count-")}, key=lambda k: (_order(k[0], TARGETS), k[2], _lib_order(k[3]), _wl_order(k[1])))
    if scal:
        w("## Scaling with tensor count (fixed total bytes)\n")
        w("| target | scale | library | tensors | MB | save MB/s | load MB/s | save ms/tensor | load ms/tensor | objects |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for k in scal:
            r = rows[k]
            n = r["ntensors"] or 1
            w(f"| {k[0]} | {k[2]:g} | {k[3]} | {n:,} | {r['nbytes'] / MB:,.0f} | {_f(r.get('save_mbs'))} | {_f(r.get('load_mbs'))} | "
              f"{_f((r.get('save_s') or 0) * 1000 / n, 3)} | {_f((r.get('load_s') or 0) * 1000 / n, 3)} | {_f(r.get('objects'))} |")
        w("")
    huge = [k for k in rows if k[1] == "huge"]
    if huge:
        w("## 16 GiB state\n")
        for k in sorted(huge):
            r = rows[k]
            w(f"* {k[0]} {k[3]} scale {k[2]:g}: save {_f(r.get('save_mbs'))} MB/s, load {_f(r.get('load_mbs'))} MB/s, "
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
    peers = [n for n in LIBS if n != "cloudckpt" and n not in BASELINES]
    w("| target | workload | scale | cloudckpt save / load MB/s | best peer save | best peer load | "
      "cloudckpt / best peer (save, load) | raw limit save / load | cloudckpt / raw limit |")
    w("|---|---|---|---|---|---|---|---|---|")
    for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (_order(kv[0][0], TARGETS), _wl_order(kv[0][1]), kv[0][2])):
        if lib != "cloudckpt" or wl not in WORKLOADS:
            continue
        others = {p: rows.get((t, wl, sc, p)) for p in peers}
        others = {p: o for p, o in others.items() if o}

        def best(field: str, others: dict[str, Any] = others) -> tuple[str, float | None]:
            cand = [(o.get(field), p) for p, o in others.items() if o.get(field)]
            if not cand:
                return "-", None
            v, p = max(cand)
            return p, v

        bs_p, bs = best("save_mbs")
        bl_p, bl = best("load_mbs")
        raws = [rows.get((t, wl, sc, b)) for b in BASELINES]
        rs = max([x.get("save_mbs") or 0 for x in raws if x] or [0]) or None
        rl = max([x.get("load_mbs") or 0 for x in raws if x] or [0]) or None
        cs, cl = r.get("save_mbs"), r.get("load_mbs")

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}x" if a and b else "-"

        w(f"| {t} | {wl} | {sc:g} | {_f(cs)} / {_f(cl)} | {bs_p} {_f(bs)} | {bl_p} {_f(bl)} | "
          f"{ratio(cs, bs)}, {ratio(cl, bl)} | {_f(rs)} / {_f(rl)} | {ratio(cs, rs)}, {ratio(cl, rl)} |")
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
            facts.append(f"load RSS {ld / MB:,.0f} MB for a {state / MB:,.0f} MB state (target <= {lim / MB:,.0f} MB: {'met' if ld <= lim else 'NOT met'})")
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
