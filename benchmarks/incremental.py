"""Incremental saves: what a later save sends, how long it takes, what it costs on disk and at load time.

    python -m benchmarks.incremental                        # the full run (~10 min on 2 cores)
    python -m benchmarks.incremental --smoke                # tiny scale, local + memory, ~1 min
    python -m benchmarks.incremental --only finetune,loads  # some sections (finetune, loads, llm, cp)

Workloads:

* ``finetune`` (benchmarks/incremental_workload.py): a LoRA fine-tuning state: a frozen
  base model shaped like a small Llama (d_model 1280, 9 layers, MLP 3456,
  vocabulary 32,000, untied head; q/k/v biases), a rank-8 adapter pair
  (``lora_A`` ``[8, in]``, ``lora_B`` ``[out, 8]``) on every attention and MLP
  matrix, Adam ``exp_avg``/``exp_avg_sq``/``step`` for the adapters only, and a
  step counter; names and order as a PEFT model's ``state_dict()`` (each
  adapter right after the matrix it adapts). ~1.06 GB at scale 1, ~2.0 % of
  it changing between saves (adapters, their moments, the counters).
  ``--scale`` multiplies the leading axis of every tensor but ``lora_A``.
* ``llm-like`` (benchmarks/workloads.py): GPT-2-shaped parameters with Adam
  state, ~0.97 GB; between saves every tensor changes (``+= 1``).

Sections (each save series and each load in a fresh process; incremental and
full interleaved, their order alternating):

1. ``finetune``: one manager per series (``CheckpointManager(..., incremental=
   True|False)``), a first save and ``--saves`` later ones, the adapters and
   moments updated between saves; per save: seconds, bytes sent to the server
   (s3-lat: request heads + bodies counted by the shaping proxy,
   ``benchmarks/proxy.py --counts``), bytes the storage layer
   wrote and copied (``storage.stats``); on local disk the disk bytes of each
   run's directory (``st_blocks`` of every inode once: hard links count once).
2. ``loads``: the latest checkpoint of each series, loaded by a new process:
   local cold (its files evicted from the page cache, checked) and warm; s3-lat
   with a new client.
3. ``llm``: ``checksums_many`` (crc32c + XXH3-128) against crc32c alone, GB/s in
   this process over the state's tensors, against the save throughput of a
   non-incremental save on local disk; and incremental vs full later saves of a
   state that changes entirely.
4. ``cp``: ``cloudckpt.copy`` of a directory of 10 incremental finetune
   checkpoints (local disk) to GCS (fake-gcs-server behind the counting proxy;
   local disk with ``--smoke``): bytes sent to the destination.

Each measurement runs in a new process (benchmarks/incremental_child.py);
the tables and the smoke checks are benchmarks/incremental_report.py.
Results (machine, command, every raw figure, the targets) go to ``--out``
(default benchmarks/results_incremental.json), a markdown table to
``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.incremental_child import run_series, spawn
from benchmarks.incremental_proxy import counting_target
from benchmarks.incremental_report import later, markdown, median, sent_bytes, smoke_checks, spread
from benchmarks.incremental_workload import D_MODEL, FFN, LAYERS, RANK, VOCAB

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results_incremental.json"


def disk_usage(path: str) -> dict[str, int]:
    """Bytes on disk under ``path`` (``st_blocks`` x 512, each inode once: hard links counted once), the
    apparent bytes of every file name, files and distinct inodes."""
    seen: set[tuple[int, int]] = set()
    disk = apparent = files = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(root, n))
            files += 1
            apparent += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                disk += st.st_blocks * 512
    return {"disk_bytes": disk, "apparent_bytes": apparent, "files": files, "inodes": len(seen)}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="cloudckpt-incr-")
        os.makedirs(self.workdir, exist_ok=True)
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def target(self, name: str, what: str, value: float, limit: float, op: str, met: bool, note: str = "") -> None:
        self.targets.append({"name": name, "what": what, "value": value, "limit": limit, "op": op, "met": met,
                             "note": note})
        self.log(f"target {name}: {value:.4g} {op} {limit:.4g}: {'met' if met else 'NOT met'} {note}")

    # ---- 1 + 2: finetune series and their loads

    def finetune(self, tname: str, with_loads: bool) -> None:
        a = self.args
        target: Any = None
        if tname == "s3-lat":
            target = counting_target("s3-lat", a.latency_ms, a.bandwidth_mbs)
        elif tname == "local":
            from benchmarks.targets import LocalTarget

            target = LocalTarget(os.path.join(self.workdir, "local"))
        else:
            from benchmarks.targets import MemoryTarget

            target = MemoryTarget()
        target.start()
        try:
            if tname == "s3-lat":
                probe = spawn({"phase": "copyprobe", "dir": target.url("probe"), "storage_options": target.storage_options})
                self.log(f"s3-lat copy probe: {json.dumps({k: round(v, 3) for k, v in probe.items()})}")
                self.results.setdefault("copy_probe", {})[tname] = probe
                target.cleanup("")
            for variant in a.variants.split(","):
                self.finetune_variant(target, tname, variant, with_loads)
        finally:
            target.stop()

    def finetune_variant(self, target: Any, tname: str, variant: str, with_loads: bool) -> None:
        """Series of saves of the finetune state, incremental and full, interleaved; their loads. ``variant``:
        ``default`` (default StoreOptions) or ``split`` (``StoreOptions(pack_threshold=1 MiB x scale)``: every
        tensor of at least that size its own object, the pack holding only the small ones)."""
        a = self.args
        series: dict[str, list[dict[str, Any]]] = {"incremental": [], "full": []}
        loads: list[dict[str, Any]] = []
        threshold = None if variant == "default" else max(4096, int((1 << 20) * a.scale))
        reps = a.local_reps if tname == "local" else a.reps
        for rep in range(reps):
            order = ["incremental", "full"] if (rep + (tname == "local")) % 2 == 0 else ["full", "incremental"]
            dirs = {}
            for mode in order:
                key = f"ft-{variant}-{mode}-{rep}"
                spec = {"phase": "series", "workload": "finetune", "scale": a.scale, "saves": a.saves + 1,
                        "dir": target.url(key), "storage_options": target.storage_options,
                        "incremental": mode == "incremental", "counts": getattr(target, "counts", None),
                        "keep": 2 if tname == "s3-lat" else None, "verify_load": target.in_process,
                        "pack_threshold": threshold}
                self.log(f"finetune {tname} {variant} {mode} rep {rep}: {spec['saves']} saves")
                if tname == "local":
                    shutil.rmtree(spec["dir"], ignore_errors=True)  # (a --workdir of an earlier run)
                r = run_series(spec) if target.in_process else spawn(spec)
                r["rep"] = rep
                if tname == "local":
                    r["disk"] = disk_usage(spec["dir"])
                    r["disk_latest"] = disk_usage(r["latest"])
                secs = [round(s["seconds"], 3) for s in r["saves"]]
                self.log(f"  seconds {secs}; sent {[sent_bytes(s) for s in r['saves']]}; "
                         f"copied {[s['bytes_copied'] for s in r['saves']]}")
                series[mode].append(r)
                dirs[mode] = r
            if with_loads and not target.in_process:
                loads += self.loads(target, tname, dirs, rep)
            if tname == "local" and not a.keep_files:
                for r in dirs.values():
                    target.cleanup(os.path.dirname(r["latest"]))
            if tname == "s3-lat":
                target.cleanup("")
        name = tname if variant == "default" else f"{tname} {variant}"
        self.results.setdefault("finetune", {})[name] = {"describe": target.describe(), "variant": variant,
                                                         "pack_threshold": threshold, "series": series}
        self.finetune_targets(name, series)
        if loads:
            self.results.setdefault("loads", {})[name] = loads
            self.load_targets(name, loads)

    def loads(self, target: Any, tname: str, dirs: dict[str, dict[str, Any]], rep: int) -> list[dict[str, Any]]:
        from benchmarks import pagecache

        out = []
        caches = ["cold", "warm"] if tname == "local" else ["fresh-client"]
        for k in range(self.args.load_reps):
            for cache in caches:
                modes = ["incremental", "full"] if (k + rep) % 2 == 0 else ["full", "incremental"]
                for mode in modes:
                    r = dirs[mode]
                    pc = None
                    if cache == "cold":
                        pc = pagecache.evict(r["latest"])
                    elif cache == "warm":
                        pc = pagecache.warm(r["latest"])
                    label = cache if pc is None or pc["ok"] else f"not-{cache}"
                    res = spawn({"phase": "load", "url": r["latest"], "storage_options": target.storage_options,
                                 "digest": r["digest"]})
                    res.update(mode=mode, cache=label, rep=rep, k=k, page_cache=pc)
                    self.log(f"load {tname} {mode} {label}: {res['load_s']:.3f} s, verified {res['verified']}")
                    out.append(res)
        return out

    def finetune_targets(self, tname: str, series: dict[str, list[dict[str, Any]]]) -> None:
        inc, full = series["incremental"], series["full"]
        if not inc or not full:
            return
        changed = inc[0]["changed_bytes"]
        inc_s, full_s = median(later(inc, "seconds")), median(later(full, "seconds"))
        sent_inc = median([sent_bytes(s) for r in inc for s in r["saves"][1:]])
        sent_full = median([sent_bytes(s) for r in full for s in r["saves"][1:]])
        summary = {"changed_bytes": changed, "state_bytes": inc[0]["bytes"],
                   "later_save_s": {"incremental": spread(later(inc, "seconds")), "full": spread(later(full, "seconds"))},
                   "sent_per_later_save": {"incremental": sent_inc, "full": sent_full},
                   "copied_per_later_save": {"incremental": median(later(inc, "bytes_copied")),
                                             "full": median(later(full, "bytes_copied"))},
                   "first_save_s": {"incremental": median([r["saves"][0]["seconds"] for r in inc]),
                                    "full": median([r["saves"][0]["seconds"] for r in full])},
                   "speedup": full_s / inc_s}
        sent_what = "proxy: request heads + bodies" if inc[0]["saves"][0].get("proxy") is not None else "storage stats bytes_written"
        self.target(f"finetune {tname}: sent", f"median bytes sent per later incremental save ({sent_what}) / changed bytes",
                    sent_inc / changed, 1.5, "<=", sent_inc <= 1.5 * changed)
        self.target(f"finetune {tname}: speed", "median full later-save seconds / incremental", full_s / inc_s, 10, ">=",
                    full_s / inc_s >= 10)
        if "disk" in inc[0]:
            d_inc, d_full = median([r["disk"]["disk_bytes"] for r in inc]), median([r["disk"]["disk_bytes"] for r in full])
            one = median([r["disk_latest"]["disk_bytes"] for r in full])
            n_later = len(inc[0]["saves"]) - 1
            limit = one + n_later * 1.5 * changed
            summary["disk"] = {"incremental_dir": d_inc, "full_dir": d_full, "one_full_checkpoint": one,
                               "checkpoints": len(inc[0]["saves"]),
                               "apparent_incremental_dir": median([r["disk"]["apparent_bytes"] for r in inc])}
            self.target(f"finetune {tname}: disk", f"disk bytes of the incremental run's directory ({len(inc[0]['saves'])} "
                        "checkpoints, hard links once) vs one full checkpoint + later saves x 1.5 x changed",
                        d_inc, limit, "<=", d_inc <= limit)
        self.results["finetune"][tname]["summary"] = summary

    def load_targets(self, tname: str, loads: list[dict[str, Any]]) -> None:
        summary = {}
        for cache in sorted({r["cache"] for r in loads}):
            if cache.startswith("not-"):
                continue
            inc = [r["load_s"] for r in loads if r["cache"] == cache and r["mode"] == "incremental"]
            full = [r["load_s"] for r in loads if r["cache"] == cache and r["mode"] == "full"]
            if not inc or not full:
                continue
            ratio = median(inc) / median(full)
            summary[cache] = {"incremental": spread(inc), "full": spread(full), "ratio": ratio}
            self.target(f"loads {tname} {cache}: level", "median incremental load s / full load s (level: 0.9..1.1)",
                        ratio, 1.1, "<=", 0.9 <= ratio <= 1.1)
        ok = all(r["verified"] for r in loads)
        self.target(f"loads {tname}: bit-exact", "loads whose state equals the saved one (fraction)",
                    float(ok), 1.0, ">=", ok)
        self.results["loads"][tname + "_summary"] = summary

    # ---- 3: llm-like

    def llm(self) -> None:
        a = self.args
        from benchmarks.targets import LocalTarget

        shutil.rmtree(os.path.join(self.workdir, "llm"), ignore_errors=True)  # (a --workdir of an earlier run)
        target = LocalTarget(os.path.join(self.workdir, "llm"))
        target.start()
        self.log("llm-like: hash throughput in one process")
        h = spawn({"phase": "hash", "workload": "llm-like", "scale": a.llm_scale, "reps": 3})
        self.log(f"  GB/s {json.dumps({k: round(v, 2) for k, v in h['gbps'].items()})}")
        series: dict[str, list[dict[str, Any]]] = {"incremental": [], "full": []}
        for rep in range(a.llm_reps):
            for mode in (["full", "incremental"] if rep % 2 == 0 else ["incremental", "full"]):
                spec = {"phase": "series", "workload": "llm-like", "scale": a.llm_scale, "saves": a.llm_saves + 1,
                        "dir": target.url(f"llm-{mode}-{rep}"), "incremental": mode == "incremental", "keep": 2}
                r = spawn(spec)
                r["rep"] = rep
                self.log(f"llm-like {mode} rep {rep}: seconds {[round(s['seconds'], 3) for s in r['saves']]}, "
                         f"copied {[s['bytes_copied'] for s in r['saves']]}")
                series[mode].append(r)
                target.cleanup(spec["dir"])
        abl = {}
        for where in ("memory", "local"):
            d = "memory://bench-ablation" if where == "memory" else target.url("ablation")
            abl[where] = spawn({"phase": "ablation", "workload": "llm-like", "scale": a.llm_scale, "reps": a.ablation_reps + 1,
                                "dir": d})
            self.log(f"llm-like {where}: save seconds with / without XXH3: "
                     f"{json.dumps({k: [round(x, 3) for x in v] for k, v in abl[where]['seconds'].items()})}")
        target.stop()
        full_s, inc_s = later(series["full"], "seconds"), later(series["incremental"], "seconds")
        all_full = [s["seconds"] for r in series["full"] for s in r["saves"]]
        first_full = [r["saves"][0]["seconds"] for r in series["full"]]
        nbytes = h["bytes"]
        save_gbps = nbytes / median(all_full) / 1e9
        t = {k: min(v) for k, v in h["seconds"].items()}
        added = t["checksums_many"] - t["crc32c"]
        ablation = {}
        for where, res in abl.items():
            w_h, wo = res["seconds"]["crc32c+xxh3"][1:], res["seconds"]["crc32c only"][1:]  # rep 0: warm-up
            ablation[where] = {"with_xxh3_s": spread(w_h), "crc32c_only_s": spread(wo),
                               "added_pct": 100 * (median(w_h) - median(wo)) / median(wo)}
        summary = {"state_bytes": nbytes, "hash_gbps": h["gbps"], "save_gbps_full": save_gbps,
                   "full_save_s_all": spread(all_full), "full_first_save_s": spread(first_full),
                   "full_later_save_s": spread(full_s), "incremental_later_save_s": spread(inc_s),
                   "checksums_many_s": t["checksums_many"], "crc32c_s": t["crc32c"], "xxh3_s": t["xxh3"],
                   "xxh3_added_s": added, "xxh3_added_pct_of_save": 100 * added / median(all_full),
                   "xxh3_added_pct_of_first_save": 100 * added / median(first_full),
                   "checksums_many_pct_of_save": 100 * t["checksums_many"] / median(all_full),
                   "ablation": ablation,
                   "ratio_incremental_over_full": median(inc_s) / median(full_s)}
        self.results["llm"] = {"hash": h, "series": series, "ablation": abl, "summary": summary}
        self.target("llm-like: hash cost", "seconds checksums_many adds to crc32c alone over the state (one thread), "
                    "% of the median non-incremental save on local disk (all saves of the full series)",
                    summary["xxh3_added_pct_of_save"], 5, "<=", summary["xxh3_added_pct_of_save"] <= 5)
        for where, ab in ablation.items():
            self.target(f"llm-like: hash cost end to end, {where}", "median save seconds with XXH3 / crc32c only, "
                        "+%", ab["added_pct"], 5, "<=", ab["added_pct"] <= 5)
        # the later saves of a series are not alike (the last one also deletes the oldest checkpoint: keep=2),
        # so incremental and full are compared save by save: the k-th later saves of every series
        level = []
        for k in range(1, a.llm_saves + 1):
            i_k = [r["saves"][k]["seconds"] for r in series["incremental"]]
            f_k = [r["saves"][k]["seconds"] for r in series["full"]]
            noise = max(spread(i_k)["spread_pct"], spread(f_k)["spread_pct"]) / 100
            level.append({"later_save": k, "incremental": spread(i_k), "full": spread(f_k),
                          "ratio": median(i_k) / median(f_k), "noise": max(0.1, noise)})
        summary["level_by_save"] = level
        for lv in level:
            self.target(f"llm-like: incremental level, later save {lv['later_save']}",
                        f"median incremental / full seconds of the later save {lv['later_save']} of each series "
                        f"(level: within max(10%, the larger spread {100 * lv['noise']:.0f}%))",
                        lv["ratio"], 1 + lv["noise"], "<=", abs(lv["ratio"] - 1) <= lv["noise"])

    # ---- 4: cp

    def cp(self) -> None:
        a = self.args
        from benchmarks.targets import LocalTarget

        for d in ("cp-src", "cp-dst"):
            shutil.rmtree(os.path.join(self.workdir, d), ignore_errors=True)  # (a --workdir of an earlier run)
        src = LocalTarget(os.path.join(self.workdir, "cp-src"))
        src.start()
        dst: Any
        if a.smoke:
            dst = LocalTarget(os.path.join(self.workdir, "cp-dst"))
        else:
            dst = counting_target("gcs")
        dst.start()
        try:
            for variant in a.variants.split(","):
                threshold = None if variant == "default" else max(4096, int((1 << 20) * a.cp_scale))
                self.log(f"cp {variant}: 10 incremental finetune checkpoints at scale {a.cp_scale} on local disk")
                series = spawn({"phase": "series", "workload": "finetune", "scale": a.cp_scale, "saves": 10,
                                "dir": src.url(f"run-{variant}"), "incremental": True, "keep": None,
                                "pack_threshold": threshold})
                base = series["saves"][0]["bytes_written"]
                changed = series["changed_bytes"]
                new_bytes = sum(s["bytes_written"] for s in series["saves"])
                self.log(f"  written {[s['bytes_written'] for s in series['saves']]}")
                res = spawn({"phase": "copy", "src": src.url(f"run-{variant}"), "dst": dst.url(f"copy-{variant}"),
                             "dst_storage_options": dst.storage_options, "counts": getattr(dst, "counts", None),
                             "digest": series["digest"]})
                sent = res["proxy"]["up"] if res.get("proxy") is not None else res["dst_stats"]["bytes_written"]
                limit = 1.2 * (base + 10 * changed)
                self.log(f"  copy {res['seconds']:.2f} s, sent {sent}, limit {limit:.0f}, verified {res['verified']}")
                name = "cp" if variant == "default" else f"cp {variant}"
                self.results.setdefault("cp", {})[variant] = {
                    "source": src.describe(), "destination": dst.describe(), "scale": a.cp_scale,
                    "pack_threshold": threshold, "series": series, "copy": res, "base_bytes": base,
                    "changed_bytes": changed, "source_bytes_written_by_10_saves": new_bytes, "sent": sent,
                    "limit": limit}
                self.target(f"{name}: sent", "bytes sent to the destination by cloudckpt.copy of 10 checkpoints vs "
                            "1.2 x (first checkpoint + 10 x changed)", sent, limit, "<=", sent <= limit)
                if not a.smoke:
                    dst.cleanup("")
                shutil.rmtree(src.url(f"run-{variant}"), ignore_errors=True)
        finally:
            dst.stop()
            src.stop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny scale on local + memory, checks, ~1 min")
    p.add_argument("--only", default="finetune,loads,llm,cp", help="sections: finetune,loads,llm,cp")
    p.add_argument("--targets", default="s3-lat,local", help="finetune targets (s3-lat, local, memory)")
    p.add_argument("--scale", type=float, default=1.0, help="finetune scale (1.0: ~1.06 GB)")
    p.add_argument("--variants", default="default,split",
                   help="finetune layouts: default (StoreOptions()), split (pack_threshold = 1 MiB x scale)")
    p.add_argument("--saves", type=int, default=3, help="later saves per series (K)")
    p.add_argument("--reps", type=int, default=1, help="series per mode and variant on s3-lat and memory")
    p.add_argument("--local-reps", type=int, default=3, help="series per mode and variant on local disk")
    p.add_argument("--load-reps", type=int, default=2)
    p.add_argument("--llm-scale", type=float, default=1.0)
    p.add_argument("--llm-reps", type=int, default=4)
    p.add_argument("--llm-saves", type=int, default=2)
    p.add_argument("--ablation-reps", type=int, default=8, help="saves with and without XXH3, each, after a warm-up pair")
    p.add_argument("--cp-scale", type=float, default=0.25)
    p.add_argument("--latency-ms", default="20,50")
    p.add_argument("--bandwidth-mbs", type=float, default=25.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep-files", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.scale, args.llm_scale, args.cp_scale = 0.01, 0.01, 0.01
        args.targets, args.reps, args.local_reps, args.load_reps, args.llm_reps = "local,memory", 1, 1, 1, 1
        args.ablation_reps = 1
    out = args.out or (None if args.smoke else str(DEFAULT_OUT))
    from benchmarks.environment import machine, versions

    run = Run(args)
    sections = set(args.only.split(","))
    try:
        if "finetune" in sections or "loads" in sections:
            for tname in args.targets.split(","):
                if tname == "s3-lat":
                    from benchmarks.targets import moto_available

                    if not moto_available():
                        run.log("s3-lat: moto/s3fs not installed, skipped")
                        continue
                run.finetune(tname, with_loads="loads" in sections)
        if "llm" in sections:
            run.llm()
        if "cp" in sections:
            run.cp()
    finally:
        if not args.workdir and not args.keep_files:
            shutil.rmtree(run.workdir, ignore_errors=True)
    spec_doc = {"d_model": D_MODEL, "ffn": FFN, "layers": LAYERS, "vocab": VOCAB, "rank": RANK}
    doc = {"command": "python -m benchmarks.incremental " + " ".join(argv), "machine": machine(),
           "versions": versions(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": time.perf_counter() - run.t0, "args": vars(args), "finetune_model": spec_doc,
           **run.results, "targets": run.targets}
    if out:
        Path(out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = markdown(doc)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    if args.smoke:
        smoke_checks(doc)
        print("smoke ok")


if __name__ == "__main__":
    main()
