"""The report of ``benchmarks.run``: the console table, and docs/benchmarks.md from a results file.

Regenerate the markdown from a results file without running anything:

    python -m benchmarks.report --results benchmarks/results.json --markdown docs/benchmarks.md

Text between ``<!-- keep:NAME -->`` and ``<!-- /keep:NAME -->`` in an existing
markdown file is carried over into the regenerated one (hand-written analysis).

The pieces: ``benchmarks.aggregate`` (records -> rows, the results file), ``benchmarks.report_markdown`` (the page),
``benchmarks.comparisons`` (its headline and verdict), ``benchmarks.environment`` (machine and versions).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.aggregate import FRESH, Key, aggregate, fmt_mb, lib_order, num, order_in
from benchmarks.report_markdown import render_markdown
from benchmarks.targets import TARGETS

_SHORT = {"cold": "cold", "warm": "warm", "fresh-client": "fresh", "in-process": "in-proc", "not-cold": "NOT-cold",
          "not-warm": "NOT-warm", "legacy": "legacy"}


def print_table(rows: dict[Key, dict[str, Any]]) -> None:
    """Console summary. load MB/s = open + read; first load s = process start -> state in memory (imports
    included); TTFC s = process start -> first checkpoint committed. Both in new processes."""
    print(f"{'target':7s} {'workload':12s} {'scale':>5s} {'lib':14s} {'save MB/s':>9s}  {'load MB/s (open+read)':28s} "
          f"{'first load s (process start->state)':36s} {'TTFC s':>7s} {'req s/l':>11s} {'objs':>6s} "
          f"{'dRSS s/l MB':>12s}  errors")
    for (t, w, sc, lib), r in sorted(rows.items(), key=lambda kv: (order_in(kv[0][0], TARGETS), kv[0][1], kv[0][2], lib_order(kv[0][3]))):
        req = f"{num(r.get('save_requests'))}/{num(r.get('load_requests'))}" if r.get("save_requests") is not None else "-"
        rss = f"{fmt_mb(r.get('save_rss_delta'))}/{fmt_mb(r.get('load_rss_delta'))}"
        loads = " ".join(f"{_SHORT[c]} {num(d.get('load_mbs'))}" for c, d in r["loads"].items()) or "-"
        firsts = " ".join(f"{_SHORT[c]} {num(d.get('first_s'), 3)}" for c, d in r["loads"].items() if c in FRESH) or "-"
        print(f"{t:7s} {w:12s} {sc:5g} {lib:14s} {num(r.get('save_mbs')):>9s}  {loads:28s} {firsts:36s} "
              f"{num(r.get('ttfc_s'), 3):>7s} {req:>11s} {num(r.get('objects')):>6s} {rss:>12s}  "
              f"{'; '.join(r['errors'] + r['cache_errors'])[:150]}")


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
