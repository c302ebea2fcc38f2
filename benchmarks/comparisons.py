"""cloudckpt against the best peer and the raw limit, figure by figure: the report's headline and verdict.

Both are computed from the aggregated rows (``benchmarks.aggregate``); every line names the figure it compares.
"""

from __future__ import annotations

from typing import Any

from benchmarks.aggregate import FRESH, MB, Key, num, order_in, workload_order
from benchmarks.libs import BASELINES, LIBS
from benchmarks.targets import TARGETS
from benchmarks.workloads import WORKLOADS


def sec_ratio(ck: float | None, peer: float | None) -> str:
    """Speed of cloudckpt relative to the peer, from seconds (lower is better)."""
    if not ck or not peer:
        return "-"
    x = peer / ck
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def mbs_ratio(ck: float | None, peer: float | None) -> str:
    if not ck or not peer:
        return "-"
    x = ck / peer
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def best_peer(rows: dict[Key, dict[str, Any]], t: str, wl: str, sc: float, get: Any, lower: bool,
               libs: tuple[str, ...] | None = None) -> tuple[str, float | None]:
    """(name, value) of the best library other than cloudckpt (peers by default; ``libs`` to choose)."""
    names = libs if libs is not None else tuple(n for n in LIBS if n != "cloudckpt" and n not in BASELINES)
    cand = [(get(rows[(t, wl, sc, n)]), n) for n in names if (t, wl, sc, n) in rows]
    cand = [(v, n) for v, n in cand if v]
    if not cand:
        return "-", None
    v, n = min(cand) if lower else max(cand)
    return n, v


def load_figure(r: dict[str, Any] | None, cache: str, field: str) -> float | None:
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
            p, v = best_peer(rows, t, wl, sc, get, lower)
            rel = (sec_ratio if lower else mbs_ratio)(get(r), v)
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
          "vs the best peer: " + per_workload("local", sc, lambda r: load_figure(r, "cold", "first_s"), True, sec) + ".")
        w(f"* **Warm first load of a new process, local disk, scale {sc:g}** (the same, every page of the checkpoint "
          "in the page cache): " + per_workload("local", sc, lambda r: load_figure(r, "warm", "first_s"), True, sec) + ".")
        w(f"* **Cold load throughput, local disk, scale {sc:g}** (open + read only, imports excluded, new process, "
          "evicted page cache): " + per_workload("local", sc, lambda r: load_figure(r, "cold", "load_mbs"), False, mbs) + ".")
        w(f"* **Warm load throughput, local disk, scale {sc:g}** (open + read only, new process, pages cached): "
          + per_workload("local", sc, lambda r: load_figure(r, "warm", "load_mbs"), False, mbs) + ".")
    for t in ("local", "s3", "gcs", "s3-lat"):
        for sc in scales(t, lambda r: r.get("ttfc_s"))[-1:]:
            w(f"* **Time to the first committed checkpoint of a new process, {t}, scale {sc:g}** (process start -> "
              "imports -> client -> first save committed): " + per_workload(t, sc, lambda r: r.get("ttfc_s"), True, sec) + ".")
    for t in ("s3",):
        for sc in scales(t, lambda r: "fresh-client" in r["loads"])[-1:]:
            w(f"* **First load of a new process, {t}, scale {sc:g}** (process start -> state in memory, new client): "
              + per_workload(t, sc, lambda r: load_figure(r, "fresh-client", "first_s"), True, sec) + ".")
    legacy = sorted({(k[0], k[2]) for k, r in rows.items() if "legacy" in r["loads"]}, key=lambda x: (order_in(x[0], TARGETS), x[1]))
    if legacy:
        w("* **Loads marked `legacy`** (" + ", ".join(f"{t} scale {sc:g}" for t, sc in legacy) + ") are not first loads "
          "of a new process: the library was imported before the timer and the checkpoint was in the page cache "
          "from the save. They are kept apart from the cold and warm figures; re-run those tables to replace them.")
    for sc in scales("local", lambda r: r.get("save_mbs"))[-1:]:
        w(f"* **Steady-state save throughput, local disk, scale {sc:g}** (library imported before the timer, save "
          "made durable): " + per_workload("local", sc, lambda r: r.get("save_mbs"), False, mbs) + ".")
    return lines



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
    for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (order_in(kv[0][0], TARGETS), workload_order(kv[0][1]), kv[0][2])):
        if lib != "cloudckpt" or wl not in WORKLOADS:
            continue
        figures: list[tuple[str, Any, bool, str]] = [("save MB/s", lambda x: x.get("save_mbs"), False, "")]
        for c in r["loads"]:
            figures.append((f"load MB/s, {c}", lambda x, c=c: load_figure(x, c, "load_mbs"), False, ""))
        for c in r["loads"]:
            if c in FRESH:
                figures.append((f"first load s, {c}", lambda x, c=c: load_figure(x, c, "first_s"), True, "s"))
        if r.get("ttfc_s"):
            figures.append(("first checkpoint s", lambda x: x.get("ttfc_s"), True, "s"))
        for label, get, lower, unit in figures:
            mine = get(r)
            if mine is None:
                continue
            p, v = best_peer(rows, t, wl, sc, get, lower)
            rp, rv = best_peer(rows, t, wl, sc, get, lower, BASELINES)
            ratio = sec_ratio if lower else mbs_ratio
            fmt = (lambda x: num(x, 3)) if unit else num
            w(f"| {t} | {wl} | {sc:g} | {label} | {fmt(mine)} | {p} {fmt(v)} | {ratio(mine, v)} | "
              f"{rp if rv else ''} {fmt(rv)} | {ratio(mine, rv)} |")
    w("")
    # other targets
    w("Other targets of the issue, cloudckpt rows only (no RSS targets for memory://, whose store lives in the process):\n")
    for (t, wl, sc, lib), r in sorted(rows.items(), key=lambda kv: (order_in(kv[0][0], TARGETS), workload_order(kv[0][1]), kv[0][2])):
        if lib != "cloudckpt":
            continue
        facts = []
        if t in ("s3", "gcs", "s3-lat") and wl == "small-many":
            sreq, lreq = r.get("save_requests"), r.get("load_requests")
            ok = sreq is not None and lreq is not None and sreq <= 16 and lreq <= 16
            facts.append(f"requests save {num(sreq)} / load {num(lreq)} (target <= 16 each: {'met' if ok else 'NOT met'})")
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
