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
import sys
import time
from typing import Any

from benchmarks.multihost_jobs import Runner, log, reshard_plan
from benchmarks.multihost_markdown import render_markdown
from benchmarks.multihost_rank import state_nbytes
from benchmarks.multihost_results import (
    DEFAULT_LIBS,
    LIBS,
    MB,
    MH_TARGETS,
    aggregate,
    fmt_record,
    print_table,
    update_results,
)
from benchmarks.targets import make_target, moto_available

SMOKE_SCALE = 0.01


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    args.command = "python -m benchmarks.multihost " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.results and args.markdown and not args.out:
        return _render_only(args)
    nprocs, targets, libs, plan = _plan(p, args)
    started = time.time()
    records, descriptions = _measure_all(args, targets, nprocs, libs, plan)
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
        log(f"wrote {args.out}")
    if args.markdown:
        render_markdown(args.markdown, all_records, all_runs)
        log(f"wrote {args.markdown}")
    print(f"ran {len(records)} measurements in {elapsed:.1f} s")

    if args.smoke:
        return _smoke_check(records, libs, nprocs, plan, args.reshard_libs)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multihost", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2,4", help="comma list of world sizes (default 1,2,4)")
    p.add_argument("--target", default="local", help=f"comma list of {', '.join(MH_TARGETS)} (default local)")
    p.add_argument("--libs", default=",".join(DEFAULT_LIBS),
                   help=f"comma list of {', '.join(LIBS)} (default cloudckpt,dcp). cloudckpt-dcp: DCP's save/load "
                   "through cloudckpt.dcp.Writer/Reader; -async: dcp.async_save (records the blocking time)")
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
    return p


def _render_only(args: argparse.Namespace) -> int:
    """``--results`` and ``--markdown`` without ``--out``: the table and the page from a results file."""
    with open(args.results) as f:
        data = json.load(f)
    print_table(aggregate(data["records"]))
    render_markdown(args.markdown, data["records"], data.get("runs", []))
    log(f"wrote {args.markdown}")
    return 0


def _plan(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[int], list[str], list[str], dict[int, int]]:
    """World sizes, targets, libraries and resharding plan of the run (``--smoke`` sets its own); exits on a bad one."""
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
    return nprocs, targets, libs, plan


def _measure_all(args: argparse.Namespace, targets: list[str], nprocs: list[int], libs: list[str],
                 plan: dict[int, int]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every measurement, repetitions interleaved; the records and the description of each target."""
    records: list[dict[str, Any]] = []
    runner = Runner(args)
    descriptions: dict[str, str] = {}
    try:
        for tname in targets:
            target = make_target(tname, workdir=args.workdir, latency_ms=args.latency_ms, bandwidth_mbs=args.bandwidth_mbs)
            target.start()
            descriptions[tname] = target.describe()
            nb = state_nbytes(args.scale)[0]
            log(f"== target {tname}: {target.describe()}; state {nb / MB:.1f} MB; ranks {nprocs}; reshard {plan or 'none'}")
            try:
                for rep in range(args.reps):
                    for n in nprocs:
                        order = libs[rep % len(libs):] + libs[: rep % len(libs)]
                        for lib in order:
                            for rec in runner.measure(lib, n, plan.get(n), target, rep):
                                records.append(rec)
                                nm = f"{rec['save_world']}" if rec["phase"] == "save" else f"{rec['save_world']}->{rec['world']}"
                                log(f"   rep {rep} {lib:9s} {rec['phase']:7s} {nm:>5s} {fmt_record(rec)}")
            finally:
                target.stop()
    finally:
        runner.stop()
    return records, descriptions


def _smoke_check(records: list[dict[str, Any]], libs: list[str], nprocs: list[int], plan: dict[int, int],
                 reshard_libs: list[str]) -> int:
    """0 if every measurement of the smoke run ran and every load verified, else 1 (and why)."""
    errors = [r for r in records if r.get("error")]
    seen = {(r["lib"], r["phase"], r["save_world"], r["world"]) for r in records if not r.get("error")}
    expected = {(lib, "save", n, n) for lib in libs for n in nprocs} | {(lib, "load", n, n) for lib in libs for n in nprocs}
    expected |= {(lib, "reshard", n, m) for lib in libs if lib in reshard_libs for n, m in plan.items()}
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
