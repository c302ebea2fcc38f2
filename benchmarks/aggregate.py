"""Benchmark records -> one row per (target, workload, scale, library): medians, MB/s, requests; the results file.

``aggregate`` groups the records of ``benchmarks.run`` (each a fresh-process measurement) and takes medians over
repetitions; ``update_results`` merges a run's records into a results JSON file. The number formats and the row
orders shared by the console table (``benchmarks.report``) and the markdown (``benchmarks.report_markdown``) are here.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from typing import Any

from benchmarks.libs import LIBS
from benchmarks.workloads import WORKLOADS

Key = tuple[str, str, float, str]  # target, workload, scale, lib
MB = 1e6


def med(values: list[float | None]) -> float | None:
    """The median of the values that are not None (None if none is)."""
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
    """One row per (target, workload, scale, library): medians over the repetitions, loads by how they were measured."""
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
                d["import_s"] = med([r.get("import_s") for r in rs])
                d["startup_s"] = med([r.get("startup_s") for r in rs])
            row["loads"][cache] = d
        primary = next((c for c in LOAD_PRIMARY if c in row["loads"]), None)
        row["load_cache"] = primary
        for f in ("load_s", "load_mbs", "load_all_s", "load_rss_delta", "load_rss_peak"):
            row[f] = row["loads"][primary][f] if primary else None
        # time to the first committed checkpoint of a new process
        if firsts:
            row["ttfc_s"] = med([r.get("ttfc_s") for r in firsts])
            row["ttfc_all_s"] = [round(r["ttfc_s"], 4) for r in firsts if r.get("ttfc_s") is not None]
            row["ttfc_startup_s"] = med([r.get("startup_s") for r in firsts])
            row["ttfc_import_s"] = med([r.get("import_s") for r in firsts])
            row["ttfc_save_s"] = med([r.get("save_s") for r in firsts])
            row["ttfc_requests"] = med([r["requests"]["total"] for r in firsts if r.get("requests")])
        row["block_s"] = med([r.get("block_s") for r in asyncs])
        row["copy_s"] = med([r.get("copy_s") for r in asyncs])
        for name, phase in (("save", "save"), ("load", "load"), ("async", "async")):
            reqs = [r["requests"] for r in recs if r["phase"] == phase and r.get("requests") and not r.get("error")]
            if reqs:
                row[f"{name}_requests"] = med([q["total"] for q in reqs])
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
    s = med([r.get(field) for r in rs])
    row[f"{name}_s"] = s
    row[f"{name}_mbs"] = nbytes / MB / s if s else None
    row[f"{name}_all_s"] = [round(r[field], 4) for r in rs if r.get(field) is not None]
    prefix = "load" if name == "first" else name
    row[f"{name}_rss_delta"] = med([r.get(f"{prefix}_rss_delta") for r in rs])
    row[f"{name}_rss_peak"] = med([r.get(f"{prefix}_rss_peak") for r in rs])


def num(x: float | None, nd: int = 0) -> str:
    """``x`` with thousands separators and ``nd`` decimals, ``-`` for None."""
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def fmt_mb(x: float | None) -> str:
    """Bytes as whole MB (10^6 bytes), ``-`` for None."""
    return "-" if x is None else f"{x / MB:,.0f}"


def order_in(x: str, seq: tuple[str, ...]) -> int:
    """The position of ``x`` in ``seq`` (after all of it if absent): a sort key."""
    return seq.index(x) if x in seq else len(seq)


def lib_order(name: str) -> int:
    """Sort key of a library: the order of ``LIBS``."""
    names = list(LIBS)
    return names.index(name) if name in names else len(names)


def workload_order(w: str) -> tuple[int, int]:
    """Sort key of a workload: the main ones in order, then count-N by N, then the rest."""
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


