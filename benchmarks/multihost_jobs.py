"""Running the multi-host measurements: the ranks of one phase (forked from a zygote, or new interpreters),
their results, one library's save and loads of one world size (``Runner``), and the resharding plan."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.multihost_rank import state_nbytes
from benchmarks.targets import ROOT, Target, requests_between


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Zygote:
    """A process that imported torch/cloudckpt once and forks the ranks of each measurement."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.logdir = tempfile.mkdtemp(prefix="cloudckpt-mh-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.multihost_rank", "--zygote"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.path.join(self.logdir, "zygote.err"), "w"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"zygote did not start: {line!r}; see {self.logdir}/zygote.err")
        self.n = 0

    def run(self, spec: dict[str, Any], nproc: int, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        req = {"id": self.n, "spec": spec, "nproc": nproc, "env": env, "timeout": timeout, "logdir": self.logdir}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote died; see {self.logdir}/zygote.err")
        return list(json.loads(line)["ranks"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.logdir, ignore_errors=True)


def run_exec(spec: dict[str, Any], nproc: int, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Every rank a new interpreter, started by cloudckpt.testing.launch (like torchrun)."""
    from cloudckpt.testing.launch import launch

    env = {**env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = launch([sys.executable, "-m", "benchmarks.multihost_rank", json.dumps(spec)], nproc, env=env,
                 timeout=timeout, cwd=str(ROOT))
    return [{"rank": r.rank, "returncode": r.returncode, "lines": r.lines, "stderr": r.stderr} for r in out]


def rank_results(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Each rank's RESULT (in rank order) and the first error, if any."""
    results, error = [], None
    for r in raw:
        res = None
        for line in reversed(r["lines"]):
            if line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
                break
        if res is None:
            res = {"rank": r["rank"], "error": f"rank {r['rank']} exited {r['returncode']} without a result: "
                                                f"{(r.get('stderr') or '')[-1500:]}"}
        if res.get("error") and error is None:
            error = f"rank {res.get('rank')}: {res['error']}"
        results.append(res)
    return results, error


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.zygote = None if args.exec else Zygote()

    def stop(self) -> None:
        if self.zygote:
            self.zygote.stop()

    def job(self, spec: dict[str, Any], nproc: int, target: Target) -> dict[str, Any]:
        """Run one phase on ``nproc`` ranks; a record with per-rank facts and server-side requests."""
        env = dict(target.child_env)
        load0 = os.getloadavg()[0]
        c0 = target.counter()
        t0 = time.perf_counter()
        if self.zygote:
            raw = self.zygote.run(spec, nproc, env, self.args.timeout)
        else:
            raw = run_exec(spec, nproc, env, self.args.timeout)
        job_s = time.perf_counter() - t0
        c1 = target.counter()
        ranks, error = rank_results(raw)
        rec: dict[str, Any] = {"job_s": job_s, "loadavg": [load0, os.getloadavg()[0]], "server_requests": requests_between(c0, c1)}
        if error:
            rec["error"] = error
            rec["traceback"] = next((r.get("traceback") for r in ranks if r.get("traceback")), None)
            return rec
        rec["seconds"] = max(r["seconds"] for r in ranks)
        rec["digests"] = ranks[0].get("digests")
        rec["ranks"] = [{k: r.get(k) for k in ("rank", "seconds", "own_s", "rss_base", "rss_peak", "rss_delta",
                                                 "state_rss", "requests", "optim_init_s", "untimed_s", "blocking_s")} for r in ranks]
        return rec

    def measure(self, lib: str, n: int, m: int | None, target: Target, rep: int) -> list[dict[str, Any]]:
        args = self.args
        nbytes, ntensors = state_nbytes(args.scale)
        key = f"mh-{lib}-n{n}-r{rep}-{int(time.time() * 1000) % 10**8}"
        url = target.url(key)
        common = {"lib": lib, "target": target.name, "url": url, "scale": args.scale,
                  "storage_options": target.storage_options, "collective_timeout": args.timeout}
        base = {"lib": lib, "target": target.name, "scale": args.scale, "rep": rep, "nbytes": nbytes,
                "ntensors": ntensors, "save_world": n, "command": args.command}
        records: list[dict[str, Any]] = []

        def profile(phase: str, world: int) -> str | None:
            if not args.profile_dir:
                return None
            os.makedirs(args.profile_dir, exist_ok=True)
            return os.path.join(args.profile_dir, f"{lib}-{target.name}-{phase}-n{n}-w{world}-r{rep}")

        try:
            save = self.job({**common, "phase": "save", "profile": profile("save", n)}, n, target)
            saved = save.pop("digests", None)
            rec = {**base, "phase": "save", "world": n, **save, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if "error" not in save:
                found = target.objects(url)
                if found:
                    rec["objects"], rec["stored_bytes"] = found
            records.append(rec)
            if "error" in save:
                return records
            loads = [("load", n)] + ([("reshard", m)] if m is not None and lib in args.reshard_libs else [])
            for phase, world in loads:
                if getattr(target, "cold", False):
                    target.drop_cache(url)  # type: ignore[attr-defined]
                got = self.job({**common, "phase": "load", "profile": profile(phase, world)}, world, target)
                loaded = got.pop("digests", None)
                rec = {**base, "phase": phase, "world": world, **got, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                if "error" not in got:
                    bad = sorted(k for k in set(saved or {}) | set(loaded or {})
                                 if (saved or {}).get(k) != (loaded or {}).get(k))
                    rec["verified"] = bool(saved) and not bad
                    rec["ntensors_checked"] = len(loaded or {})
                    if bad:
                        rec["error"] = (f"restored state differs from the saved one in {len(bad)} of "
                                        f"{len(saved or {})} tensors: {', '.join(bad[:5])}")
                records.append(rec)
        except Exception as exc:  # a target failure must not lose the other results
            records.append({**base, "phase": "save", "world": n, "error": f"harness: {type(exc).__name__}: {exc}"})
        finally:
            try:
                target.cleanup(url)
            except Exception as exc:
                log(f"   cleanup of {url} failed: {exc}")
        return records


def reshard_plan(nprocs: list[int], spec: str) -> dict[int, int]:
    """Saved world size -> world size of the resharding load.

    Example:
        >>> reshard_plan([1, 2, 4], "auto")
        {1: 2, 2: 4, 4: 1}
        >>> reshard_plan([1, 2, 4], "4:2,2:4")
        {4: 2, 2: 4}
        >>> reshard_plan([4], "auto")
        {}
    """
    if spec == "none":
        return {}
    if spec == "auto":
        order = sorted(set(nprocs))
        if len(order) < 2:
            return {}
        return {n: order[(i + 1) % len(order)] for i, n in enumerate(order)}
    out = {}
    for part in spec.split(","):
        a, b = part.split(":")
        if int(a) == int(b):
            raise SystemExit(f"--reshard {part}: a resharding load needs another world size")
        out[int(a)] = int(b)
    return out
