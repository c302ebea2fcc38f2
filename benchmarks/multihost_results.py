"""Multi-host records -> rows per (target, scale, library, phase, saved world, loaded world): medians, requests
per rank; the results file; the console table. The names and orders of libraries, targets and phases."""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from typing import Any

LIBS = ("cloudckpt", "dcp", "cloudckpt-dcp", "dcp-async", "cloudckpt-dcp-async")
DEFAULT_LIBS = ("cloudckpt", "dcp")  # cloudckpt-dcp: cloudckpt.dcp.Writer/Reader under dcp.save/load; -async: dcp.async_save
MH_TARGETS = ("local", "s3", "s3-lat")
PHASES = ("save", "load", "reshard")
MB = 1e6


def fmt_record(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return f"ERROR {rec['error'][:300]}"
    s = rec["seconds"]
    ranks = rec.get("ranks") or []
    req = "/".join(str(req_total(r, rec["target"], rec["lib"])) for r in ranks)
    rss = max((r.get("rss_delta") or 0) for r in ranks) / MB
    extra = f" verified={rec['verified']}" if "verified" in rec else ""
    objs = f" objects {rec['objects']}" if rec.get("objects") is not None else ""
    srv = f" server {rec['server_requests']['total']}" if rec.get("server_requests") else ""
    return (f"{rec['nbytes'] / MB / s:8.1f} MB/s ({s:6.2f} s)  req/rank {req}{srv}{objs}  dRSS max {rss:.0f} MB"
            f"  load {rec['loadavg'][0]:.1f}  job {rec['job_s']:.0f} s{extra}")


def req_total(rank: dict[str, Any], target: str, lib: str) -> int | None:
    """The request count of one rank shown in the tables: S3 API calls on S3 (both libraries),
    cloudckpt storage operations / DCP file opens on local disk."""
    req = rank.get("requests") or {}
    if target.startswith("s3"):
        return (req.get("http") or {}).get("total", 0)
    if lib.startswith("cloudckpt"):
        return (req.get("ops") or {}).get("total", 0)
    return (req.get("opens") or {}).get("total", 0)


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


def med(values: list[float | None]) -> float | None:
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
        row["seconds"] = med([r["seconds"] for r in ok])
        row["all_s"] = [round(r["seconds"], 3) for r in ok]
        row["mbs"] = row["nbytes"] / MB / row["seconds"] if row["seconds"] else None
        if any("verified" in r for r in recs):
            row["verified"] = bool(ok) and all(r.get("verified") for r in ok) and len(ok) == len(recs)
        if ok:
            first = ok[0]
            t, lib = first["target"], first["lib"]
            row["req_per_rank"] = [req_total(rk, t, lib) for rk in first["ranks"]]
            row["requests_by_rank"] = [rk.get("requests") for rk in first["ranks"]]
            row["server_requests"] = med([(r.get("server_requests") or {}).get("total") for r in ok])
            row["server_by"] = first.get("server_requests")
            row["rss_delta_max"] = med([max((rk.get("rss_delta") or 0) for rk in r["ranks"]) for r in ok])
            row["rss_peak_max"] = med([max((rk.get("rss_peak") or 0) for rk in r["ranks"]) for r in ok])
            row["state_rss"] = med([max((rk.get("state_rss") or 0) for rk in r["ranks"]) for r in ok])
            row["own_s"] = [med([r["ranks"][i]["own_s"] for r in ok if i < len(r["ranks"])]) for i in range(len(first["ranks"]))]
            objs = [r.get("objects") for r in ok if r.get("objects") is not None]
            if objs:
                row["objects"] = objs[0]
                row["stored_bytes"] = next(r.get("stored_bytes") for r in ok if r.get("objects") is not None)
        rows[key] = row
    return rows


def print_table(rows: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    print(f"{'target':7s} {'scale':>5s} {'lib':9s} {'phase':8s} {'N->M':>6s} {'MB/s':>7s} {'s':>7s} {'req/rank':>16s} "
          f"{'server':>7s} {'objs':>5s} {'dRSS':>6s} verified  errors")
    for key in sorted(rows, key=row_order):
        t, sc, lib, ph, n, w = key
        r = rows[key]
        req = "/".join(str(x) for x in r.get("req_per_rank") or [])
        nm = f"{n}" if ph == "save" else f"{n}->{w}"
        print(f"{t:7s} {sc:5g} {lib:9s} {ph:8s} {nm:>6s} {num(r.get('mbs')):>7s} {num(r.get('seconds'), 2):>7s} {req:>16s} "
              f"{num(r.get('server_requests')):>7s} {num(r.get('objects')):>5s} {fmt_mb(r.get('rss_delta_max')):>6s} "
              f"{r.get('verified', '-')!s:8s}  {'; '.join(r['errors'])[:200]}")


def row_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    t, sc, lib, ph, n, w = key
    return (MH_TARGETS.index(t) if t in MH_TARGETS else 9, sc, n, PHASES.index(ph), LIBS.index(lib) if lib in LIBS else 9, w)


def num(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:,.0f}"
