"""The DCP table of docs/benchmarks.md from a results file of the multi-host suite.

    python -m benchmarks.dcp_table benchmarks/results_dcp.json

The file comes from ``python -m benchmarks.multihost --libs dcp,cloudckpt-dcp,dcp-async,cloudckpt-dcp-async
--out FILE``: one row per target, phase and world size; MB/s (seconds) of DCP's own writer (``FileSystemWriter``
on local disk, ``FsspecWriter`` on S3) and of ``cloudckpt.dcp``; for the async saves, the seconds
``dcp.async_save`` blocked (the slowest rank) and the total; the objects each save stored.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks.multihost_results import MB, PHASES

__all__ = ["table"]


def _cell(x: dict[str, Any] | None) -> str:
    return "-" if x is None else f"{x['mbs']:.0f} ({x['seconds']:.2f})"


def _async(x: dict[str, Any] | None) -> str:
    return "-" if x is None or x["blocked"] is None else f"{x['blocked']:.2f} / {x['seconds']:.2f}"


def table(records: list[dict[str, Any]]) -> str:
    """The markdown table of ``records`` (errors are listed under it)."""
    rows: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    errors = []
    for r in records:
        if r.get("error"):
            errors.append(f"* {r['lib']} {r['target']} {r['phase']} {r['save_world']}->{r['world']}: {r['error'][:200]}")
            continue
        blocked = None
        if r["phase"] == "save" and r["lib"].endswith("-async"):
            blocked = max((x.get("blocking_s") or 0.0) for x in r["ranks"])
        key = (r["target"], r["phase"], r["save_world"], r["world"])
        rows.setdefault(key, {})[r["lib"]] = {"mbs": r["nbytes"] / r["seconds"] / MB, "seconds": r["seconds"],
                                              "blocked": blocked, "objects": r.get("objects")}  # fmt: skip
    out = ["| target | phase | ranks | DCP own writer MB/s (s) | cloudckpt.dcp MB/s (s) | DCP async: blocked s / total s "
           "| cloudckpt.dcp async: blocked s / total s | objects (DCP / cloudckpt.dcp) |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in sorted(rows, key=lambda k: (k[0], PHASES.index(k[1]), k[2], k[3])):
        t, phase, n, m = key
        v = rows[key]
        own = "FileSystemWriter" if t == "local" else "FsspecWriter"
        save = phase == "save"
        objects = f"{(v.get('dcp') or {}).get('objects')} / {(v.get('cloudckpt-dcp') or {}).get('objects')}" if save else ""
        out.append(
            f"| {t} ({own}) | {phase} | {n if save else f'{n}->{m}'} | {_cell(v.get('dcp'))} | {_cell(v.get('cloudckpt-dcp'))} "
            f"| {_async(v.get('dcp-async')) if save else '-'} | {_async(v.get('cloudckpt-dcp-async')) if save else '-'} | {objects} |"
        )
    return "\n".join(out + (["", *errors] if errors else []))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0] if args else "benchmarks/results_dcp.json") as f:
        print(table(json.load(f)["records"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
