"""Run the benchmark suite: ``python -m benchmarks.run --help``.

Examples:
    python -m benchmarks.run --workload small-many --target local --reps 3
    python -m benchmarks.run --workload all --target local,s3 --scale 0.25 --reps 3 \\
        --peers all --out benchmarks/results.json --markdown docs/benchmarks.md
    python -m benchmarks.run --scaling --target local,memory --reps 3     # 10..10,000 tensors
    python -m benchmarks.run --workload huge --target local --peers none  # 16 GiB state
    python -m benchmarks.run --huge --target s3-disk --baselines raw --no-async --no-first-save  # on S3 (s3rver)
    python -m benchmarks.run --smoke                                      # CI: tiny, < 60 s

Every measurement is a fresh subprocess (``benchmarks.child``). Repetitions are
interleaved: rep 1 of every library, then rep 2 (with the library order
rotated), and so on; reported numbers are medians over reps. MB/s is tensor
payload (1 MB = 10^6 bytes) over wall time of the save (made durable) or load.

Per library and repetition, each in its own new process:

* ``save``: steady-state save (library imported before the timer starts).
* ``load``, local disk, twice: ``cold`` (every file of the checkpoint evicted
  from the page cache with POSIX_FADV_DONTNEED after os.sync(), then 0 resident
  pages checked with mincore and fincore; a failed eviction is recorded as
  ``not-cold``, never as cold) and ``warm`` (every file read once, all pages
  checked resident); the order alternates by repetition. Object stores: one
  load, ``fresh-client`` (new process, new client; moto serves objects from its
  memory, so the server has no cold state to reproduce); ``s3-disk`` (s3rver,
  objects as files on local disk): cold and warm like local disk, on the
  server's files of the checkpoint. Each load times the
  library's imports and its first call: ``first_load_s`` = process start ->
  state in memory, ``import_s``, ``load_s`` (open + read).
* ``first-save``: time to the first committed checkpoint of a new process
  (process start -> imports -> client creation -> save committed), local disk
  and object stores.
* ``async`` as before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from benchmarks import pagecache
from benchmarks.libs import ALL_LIBS, BASELINES, LIBS
from benchmarks.targets import ROOT, TARGETS, Target, make_target, moto_available, requests_between
from benchmarks.workloads import WORKLOADS, spec_nbytes, workload_spec

SCALING_WORKLOADS = ("count-10", "count-100", "count-1000", "count-10000")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compile_sources() -> None:
    """Compile cloudckpt's (and the harness's) sources to bytecode before any
    measurement, as ``pip install`` does for an installed package. The peers are
    installed packages and have bytecode; cloudckpt runs from this tree, and
    where ``PYTHONDONTWRITEBYTECODE`` is set (as on the machines this suite runs
    on) every new process would otherwise compile its source again (0.06-0.13 s
    of its imports), which no installed cloudckpt pays."""
    import compileall

    for package in ("cloudckpt", "benchmarks"):
        if not compileall.compile_dir(str(ROOT / package), quiet=1):
            raise SystemExit(f"could not compile {ROOT / package} to bytecode")


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # the child's clock of "process start": CLOCK_MONOTONIC is one clock for every process
    t_spawn = time.clock_gettime(time.CLOCK_MONOTONIC)
    argv = [sys.executable, "-m", "benchmarks.child", json.dumps({**spec, "t_spawn": t_spawn})]
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.clock_gettime(time.CLOCK_MONOTONIC) - t_spawn
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "process_wall_s": wall}
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"child exited {proc.returncode} without a result: {tail}"}


def measure(lib_name: str, workload: str, scale: float, target: Target, rep: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One library's turn in a repetition: save, its fresh-process loads (local: cold and warm, in alternating
    order; object stores: fresh-client), the first save of a new process, async; returns the records."""
    lib = LIBS[lib_name]
    key = f"{lib_name.replace('.', '_')}-{workload}-r{rep}-{int(time.time() * 1000) % 10**8}"
    url = target.url(key)
    wspec = workload_spec(workload, scale)
    base = {"lib": lib_name, "workload": workload, "target": target.name, "scale": scale, "rep": rep,
            "nbytes": spec_nbytes(wspec), "ntensors": len(wspec)}
    common = {"lib": lib_name, "workload": workload, "scale": scale, "target": target.name,
              "storage_options": target.storage_options, "env": target.child_env}
    records: list[dict[str, Any]] = []
    prof = args.profile_dir if (args.profile_dir and lib_name == "cloudckpt") else None

    def profile_path(phase: str) -> str | None:
        if not prof:
            return None
        os.makedirs(prof, exist_ok=True)
        return os.path.join(prof, f"{lib_name}-{workload}-{target.name}-{phase}-r{rep}.prof")

    def saved(phase: str, at: str) -> dict[str, Any]:
        """Run a save phase in a child; its record with the requests it made and the objects it left."""
        c0 = target.counter()
        r = run_child({**common, "url": at, "phase": phase, "profile": profile_path(phase)}, args.timeout)
        c1 = target.counter()
        rec = {**base, "phase": phase, **r, "requests": requests_between(c0, c1)}
        if "error" not in r:
            obj = target.objects(at)
            if obj:
                rec["objects"], rec["stored_bytes"] = obj
        return rec

    try:
        if target.in_process:
            r = run_child({**common, "url": url, "phase": "saveload", "profile": profile_path("save")}, args.timeout)
            rec = {**base, "phase": "saveload", **r}
            if "digest" in r and "load_digest" in r and r["digest"] != r["load_digest"]:
                rec["error"] = f"loaded state differs from saved state ({r['load_digest']} != {r['digest']})"
            records.append(rec)
        else:
            rec = saved("save", url)
            records.append(rec)
            if "error" not in rec:
                on_disk = target.page_cache_path(url) is not None
                caches = [c for c in args.loads if c in ("cold", "warm")] if on_disk else ["fresh-client"]
                if rep % 2:
                    caches.reverse()  # cold first in even reps, warm first in odd ones
                for cache in caches:
                    records.append(load_fresh(lib_name, cache, url, rec.get("digest"), target, common, base, args,
                                              profile_path(f"load-{cache}")))
            target.cleanup(url)
        if args.first_save and not target.in_process:
            furl = target.url(key + "-first")
            records.append(saved("first-save", furl))
            target.cleanup(furl)
        if args.async_save and lib.has_async and not (args.smoke and target.name != "local"):
            aurl = target.url(key + "-async")
            c0 = target.counter()
            r3 = run_child({**common, "url": aurl, "phase": "async", "profile": profile_path("async")}, args.timeout)
            c1 = target.counter()
            records.append({**base, "phase": "async", **r3, "requests": requests_between(c0, c1)})
            target.cleanup(aurl)
    except Exception as exc:  # a target failure must not lose the other results
        records.append({**base, "phase": "save", "error": f"harness: {type(exc).__name__}: {exc}"})
    return records


def load_fresh(lib_name: str, cache: str, url: str, digest: str | None, target: Target, common: dict[str, Any],
               base: dict[str, Any], args: argparse.Namespace, profile: str | None) -> dict[str, Any]:
    """One first load of a new process; ``cache`` cold / warm (local disk, set and checked here) or fresh-client."""
    page_cache = None
    files = target.page_cache_path(url)  # local disk: the checkpoint; s3-disk: the server's files of it
    if cache == "cold" and files is not None:
        page_cache = pagecache.evict(files)
    elif cache == "warm" and files is not None:
        page_cache = pagecache.warm(files)
    c0 = target.counter()
    r = run_child({**common, "url": url, "phase": "load", "cache": cache, "profile": profile}, args.timeout)
    c1 = target.counter()
    rec = {**base, "phase": "load", **r, "cache": cache, "requests": requests_between(c0, c1)}
    if page_cache is not None:
        rec["page_cache"] = page_cache
        if not page_cache["ok"]:
            # never report it under the name it was meant to have
            rec["cache"] = "not-cold" if cache == "cold" else "not-warm"
            rec["cache_error"] = page_cache["error"]
    if "error" not in r and r.get("load_digest") != digest:
        rec["error"] = f"loaded state differs from saved state ({r.get('load_digest')} != {digest})"
    return rec


def _fmt_rec(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return f"ERROR {rec['error'][:200]}"
    mb = rec["nbytes"] / 1e6
    parts = []
    if rec.get("cache"):
        parts.append(f"[{rec['cache']}]")
    if rec["phase"] == "first-save":
        parts.append(f"first checkpoint {rec.get('ttfc_s', 0):.3f} s after process start "
                     f"(start {rec.get('startup_s') or 0:.3f}, imports {rec.get('import_s', 0):.3f}, save {rec.get('save_s', 0):.3f})")
        return "  ".join(parts)
    if rec.get("first_load_s") is not None:
        parts.append(f"first load {rec['first_load_s']:.3f} s after process start "
                     f"(start {rec.get('startup_s') or 0:.3f}, imports {rec.get('import_s', 0):.3f}, open+read {rec['load_s']:.3f})")
    if rec.get("cache_error"):
        parts.append(f"({rec['cache_error'][:120]})")
    for ph in ("save", "load", "async"):
        s = rec.get(f"{ph}_s")
        if s:
            parts.append(f"{ph} {mb / s:8.1f} MB/s ({s:.3f} s)")
    if rec.get("block_s") is not None:
        parts.append(f"blocks {rec['block_s']:.3f} s (copy {rec['copy_s']:.3f} s)")
    if rec.get("requests"):
        parts.append(f"req {rec['requests'].get('total')}")
    if rec.get("objects") is not None:
        parts.append(f"objects {rec['objects']}")
    return "  ".join(parts)


def select_libs(peers: str, target: str, workload: str) -> tuple[list[str], list[str]]:
    """(library names to run, notes on those skipped)."""
    wanted = ["cloudckpt", *BASELINES]
    if peers == "all":
        wanted += [lib.name for lib in ALL_LIBS if lib.name not in wanted]
    elif peers not in ("none", ""):
        for name in peers.split(","):
            name = name.strip()
            if name not in LIBS:
                raise SystemExit(f"unknown peer {name!r}: choose from {', '.join(LIBS)}")
            if name not in wanted:
                wanted.append(name)
    run, notes = [], []
    for name in wanted:
        lib = LIBS[name]
        why = lib.available()
        if why:
            notes.append(f"{name}: skipped, {why}")
        elif target not in lib.targets:
            notes.append(f"{name}: skipped on {target} (no support for this target)")
        else:
            run.append(name)
    return run, notes


def smoke_fresh_checks(records: list[dict[str, Any]], expected: set[tuple[str, str, str]]) -> list[str]:
    """The fresh-process paths ran: every (lib, target, workload) outside memory:// has its first-save and its
    fresh loads (local: cold or not-cold, and warm), every cold load evicted and checked it, every not-cold says why."""
    problems = []
    for lib, t, w in sorted(expected):
        if t == "memory":
            continue
        recs = [r for r in records if (r["lib"], r["target"], r["workload"]) == (lib, t, w)]
        caches = {r.get("cache") for r in recs if r["phase"] == "load"}
        need = [{"cold", "not-cold"}, {"warm", "not-warm"}] if t in ("local", "s3-disk") else [{"fresh-client"}]
        for alternatives in need:
            if not caches & alternatives:
                problems.append(f"{lib} {t} {w}: no {'/'.join(sorted(alternatives))} load")
        if not any(r["phase"] == "first-save" and r.get("ttfc_s") for r in recs):
            problems.append(f"{lib} {t} {w}: no time to first checkpoint")
        for r in recs:
            if r["phase"] == "load" and not (r.get("first_load_s") and r.get("import_s") is not None):
                problems.append(f"{lib} {t} {w}: a load without first_load_s / import_s (not a fresh process?)")
            pc = r.get("page_cache")
            if r.get("cache") == "cold" and not (pc and pc["ok"] and pc["resident"] == 0 and pc["pages"] > 0):
                problems.append(f"{lib} {t} {w}: a cold load whose eviction was not checked: {pc}")
            if r.get("cache") in ("not-cold", "not-warm") and not r.get("cache_error"):
                problems.append(f"{lib} {t} {w}: a {r['cache']} load that does not say why")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.loads = [c.strip() for c in args.loads.split(",") if c.strip()]
    if set(args.loads) - {"cold", "warm"}:
        raise SystemExit(f"--loads: choose from cold, warm (got {','.join(args.loads)})")
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    compile_sources()
    workloads, targets = _configure(args)
    started = time.time()
    records, notes = _measure_all(args, targets, workloads, command)
    elapsed = time.time() - started
    _report(args, records, notes, targets, workloads, command, elapsed)
    if args.smoke:
        return _smoke_check(args, records, targets, workloads)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="small-many",
                   help=f"comma list of {', '.join(WORKLOADS)}, count-N, huge; or 'all' (default small-many)")
    p.add_argument("--target", default="local", help=f"comma list of {', '.join(TARGETS)}; or 'all' (default local)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the bytes of every workload (tensor count fixed)")
    p.add_argument("--peers", default="all", help="'all', 'none' (cloudckpt + raw baselines only) or a comma list")
    p.add_argument("--no-async", dest="async_save", action="store_false", help="skip the async-save measurements")
    p.add_argument("--scaling", action="store_true",
                   help=f"tensor-count scaling: workloads {', '.join(SCALING_WORKLOADS)} (256 MiB x scale), peers none")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the raw baselines (quick before/after comparisons; the report's raw rows need them)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"which raw baselines to run, comma list of {', '.join(BASELINES)} (default all); "
                        "e.g. raw alone for the 16 GiB state on S3, where raw-threads holds ~2 copies of the state")
    p.add_argument("--huge", action="store_true", help="the 16 GiB state (workload 'huge'), cloudckpt + raw only")
    p.add_argument("--loads", default="cold,warm",
                   help="local disk: which fresh-process loads, comma list of cold, warm (default both)")
    p.add_argument("--no-first-save", dest="first_save", action="store_false",
                   help="skip the time-to-first-checkpoint measurement (fresh process: imports + client + first save)")
    p.add_argument("--latency-ms", default="20,50", help="s3-lat: per-request latency range (default 20,50)")
    p.add_argument("--bandwidth-mbs", type=float, default=25.0, help="s3-lat: MB/s cap per connection (default 25)")
    p.add_argument("--workdir", default=None, help="local target directory (default: a new temp dir)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    p.add_argument("--out", default=None, help="merge the records into this JSON file")
    p.add_argument("--markdown", default=None, help="regenerate this markdown report from --out (or this run)")
    p.add_argument("--profile-dir", default=None, help="cProfile every cloudckpt measurement into this directory")
    p.add_argument("--smoke", action="store_true", help="CI smoke run: every workload, tiny scale, 1 rep; asserts it ran")
    return p


def _configure(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Apply --smoke, --scaling and --huge to ``args``; the workloads (validated) and targets of the run."""
    if args.smoke:
        args.workload = ",".join(WORKLOADS)
        targets = ["local", "memory"] + (["s3"] if moto_available() else [])
        args.target = ",".join(targets)
        args.reps = 1
        args.scale = 0.005
        args.peers = "none"
        args.libs_override = ["cloudckpt", "raw-threads"]
    else:
        args.libs_override = None
    if args.scaling:
        args.workload = ",".join(SCALING_WORKLOADS)
        args.peers = "none"
    if args.huge:
        args.workload = "huge"
        args.peers = "none"

    workloads = list(WORKLOADS) if args.workload == "all" else [w.strip() for w in args.workload.split(",") if w.strip()]
    for w in workloads:
        workload_spec(w, args.scale)  # validates
    targets = list(TARGETS) if args.target == "all" else [t.strip() for t in args.target.split(",") if t.strip()]
    return workloads, targets


def _libs_for(args: argparse.Namespace, target: Target, workload: str, notes: list[str]) -> list[str]:
    """The libraries measured on ``target`` with ``workload``; the skipped ones are added to ``notes``."""
    libs, skipped = select_libs(args.peers, target.name, workload)
    if args.libs_override:
        libs = [n for n in args.libs_override if n in libs]
    keep = set() if args.no_raw else {b.strip() for b in args.baselines.split(",")}
    if keep - set(BASELINES):
        raise SystemExit(f"--baselines: choose from {', '.join(BASELINES)} (got {args.baselines})")
    libs = [n for n in libs if n not in BASELINES or n in keep]
    if args.smoke and target.object_store and workload != "large-few":
        # one object per tensor costs ~10 ms per request on moto: keep the smoke short
        libs = [n for n in libs if n == "cloudckpt"]
    for n in skipped:
        if n not in notes:
            notes.append(n)
    return libs


def _measure_all(args: argparse.Namespace, targets: list[str], workloads: list[str],
                 command: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every measurement, repetitions interleaved; the records and the notes on what was skipped."""
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for tname in targets:
        target = make_target(tname, workdir=args.workdir, latency_ms=args.latency_ms,
                             bandwidth_mbs=args.bandwidth_mbs)
        try:
            target.start()
        except Exception as exc:
            notes.append(f"target {tname}: could not start ({type(exc).__name__}: {exc})")
            _log(f"!! target {tname} unavailable: {exc}")
            continue
        _log(f"== target {tname}: {target.describe()}")
        try:
            for workload in workloads:
                libs = _libs_for(args, target, workload, notes)
                nbytes = spec_nbytes(workload_spec(workload, args.scale))
                _log(f"-- {workload} x{args.scale:g} ({nbytes / 1e6:.1f} MB) on {tname}: {', '.join(libs)}")
                for rep in range(args.reps):
                    order = libs[rep % len(libs):] + libs[: rep % len(libs)] if libs else []
                    for lib_name in order:
                        for rec in measure(lib_name, workload, args.scale, target, rep, args):
                            rec["command"] = command
                            rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                            records.append(rec)
                            _log(f"   rep {rep} {lib_name:13s} {rec['phase']:8s} {_fmt_rec(rec)}")
        finally:
            target.stop()
    return records, notes


def _report(args: argparse.Namespace, records: list[dict[str, Any]], notes: list[str], targets: list[str],
            workloads: list[str], command: str, elapsed: float) -> None:
    """The console table and notes; merge into --out and write --markdown."""
    from benchmarks.aggregate import aggregate, update_results
    from benchmarks.report import print_table
    from benchmarks.report_markdown import render_markdown

    rows = aggregate(records)
    print_table(rows)
    for n in notes:
        print(f"note: {n}")
    meta = {"command": command, "elapsed_s": elapsed, "targets": targets, "workloads": workloads, "scale": args.scale,
            "reps": args.reps, "notes": notes,
            "target_descriptions": {t: make_target(t, latency_ms=args.latency_ms, bandwidth_mbs=args.bandwidth_mbs).describe()
                                    for t in targets if t != "local"}}
    all_records = records
    all_meta = [meta]
    if args.out:
        all_records, all_meta = update_results(args.out, records, meta)
    if args.markdown:
        render_markdown(args.markdown, all_records, all_meta)
        _log(f"wrote {args.markdown}")
    print(f"ran {len(records)} measurements in {elapsed:.1f} s")


def _smoke_check(args: argparse.Namespace, records: list[dict[str, Any]], targets: list[str], workloads: list[str]) -> int:
    """0 if every measurement of the smoke run ran, none failed and the fresh-process paths were taken, else 1."""
    errors = [r for r in records if r.get("error")]
    phases = Counter((r["lib"], r["target"], r["workload"]) for r in records)
    expected = {(lib, t, w) for lib in args.libs_override for t in targets for w in workloads
                if lib == "cloudckpt" or t != "s3" or w == "large-few"}
    missing = expected - set(phases)
    problems = smoke_fresh_checks(records, expected)
    if errors or missing or problems:
        for r in errors:
            print(f"SMOKE ERROR {r['lib']} {r['target']} {r['workload']} {r['phase']}: {r['error']}")
        for m in sorted(missing):
            print(f"SMOKE MISSING {m}")
        for msg in problems:
            print(f"SMOKE FRESH {msg}")
        return 1
    cold = [r for r in records if r["phase"] == "load" and r.get("cache") in ("cold", "not-cold")]
    print(f"smoke: {sum(r['cache'] == 'cold' for r in cold)} cold loads evicted (0 resident pages, checked), "
          f"{sum(r['cache'] == 'not-cold' for r in cold)} could not be evicted (reported as not-cold)")
    print("smoke ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
