"""One measurement in a fresh process: ``python -m benchmarks.child '<json spec>'``.

Phases:
* ``save``: generate the state (untimed), save it (timed, incl. making it durable
  on local disk), report seconds, peak RSS during the save, and the state digest.
* ``async``: time one plain in-memory copy of the state, then time how long
  the library's async save blocks the caller, then how long until it is durable.
* ``saveload``: save then load in the same process (``memory://``, whose
  contents live in the process): the only load that is not a fresh process's.

Fresh-process phases (nothing is imported before the timer starts; the parent
passes ``t_spawn``, its ``CLOCK_MONOTONIC`` time right before it started this
process, a clock every process of the machine shares):

* ``load``: the first load of a new process. ``startup_s``
  (process start: interpreter, this module), ``import_s`` (numpy + what a user
  imports for the library, ``Lib.imports``), ``load_s`` (open + read: the
  library's first call until the state is in memory, lazy imports and client
  creation included), ``first_load_s`` = process start -> state in memory (all
  three). Whether the checkpoint's pages were in the page cache is the parent's
  business (``cache``: cold / warm, checked there). Also reported: peak RSS
  during the open + read, and the digest of what was loaded (the parent
  compares it with the save's).
* ``first-save``: the time to the first committed checkpoint of a new process:
  ``ttfc_s`` = process start -> the first save is committed (made durable on
  local disk), i.e. ``startup_s + import_s + save_s``, ``save_s`` including
  client creation and lazy imports.

Not counted in either (and reported): importing this harness's own modules
(``harness_s``) and, in ``first-save``, generating the state (``gen_s``) and
handing it to the library's array type (``convert_s``, torch.from_numpy).

The result is printed as one line ``RESULT <json>``. With ``"profile"`` in the
spec the timed region runs under cProfile and the stats are dumped there.
"""

from __future__ import annotations

import time

_T_IMPORTED = time.clock_gettime(time.CLOCK_MONOTONIC)

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

# before anything imports gcsfs / botocore
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_now() -> int:
    kb = _status_kb("VmRSS")
    return (kb or 0) * 1024


def reset_peak() -> bool:
    """Reset the peak-RSS watermark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def now() -> float:
    """``CLOCK_MONOTONIC``: one clock for the parent and every child."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class _Timed:
    def __init__(self, profile: str | None, collect: bool = True) -> None:
        self.profile = profile
        self.collect = collect  # False in the fresh-process phases: a full gc is not part of a user's first call
        self.prof: Any = None

    def __enter__(self) -> _Timed:
        if self.collect:
            gc.collect()
        self.base = rss_now()
        self.reset_ok = reset_peak()
        if self.profile:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.end = now()
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(self.profile)
        self.peak = peak_rss()

    def report(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}_s": self.seconds,
            f"{prefix}_rss_base": self.base,
            f"{prefix}_rss_peak": self.peak,
            f"{prefix}_rss_delta": max(0, self.peak - self.base) if self.reset_ok else None,
        }


def run_fresh(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``load`` and ``first-save`` phases: see the module docstring."""
    t_start = now()
    out: dict[str, Any] = {"pid": os.getpid(), "fresh": True}
    t_spawn = spec.get("t_spawn")
    out["startup_s"] = t_start - t_spawn if t_spawn is not None else None
    out["startup_module_s"] = t_start - _T_IMPORTED  # of which: this module's own (stdlib) imports and set-up

    import numpy  # noqa: F401  every library here returns or takes numpy/torch arrays: counted as an import

    t_np = now()
    from benchmarks.libs import LIBS, Ctx, fsync_tree
    from benchmarks.workloads import digest, make_state, workload_spec

    lib = LIBS[spec["lib"]]
    if spec.get("env"):
        os.environ.update(spec["env"])
    wspec = workload_spec(spec["workload"], spec["scale"])
    ctx = Ctx(spec["target"], spec["url"], spec.get("storage_options") or {}, wspec)
    phase = spec["phase"]
    profile = spec.get("profile")
    raw_state = make_state(wspec, spec.get("seed", 0)) if phase == "first-save" else None
    t_harness = now()
    lib.user_import()
    t_lib = now()
    out["numpy_import_s"] = t_np - t_start
    out["lib_import_s"] = t_lib - t_harness
    out["import_s"] = out["numpy_import_s"] + out["lib_import_s"]
    excluded = t_harness - t_np  # harness modules (+ generating the state for first-save)
    out["harness_s"] = excluded
    if phase == "first-save":
        t0 = now()
        state = lib.convert(raw_state)
        del raw_state
        out["convert_s"] = now() - t0
        excluded += out["convert_s"]
        out["state_rss"] = rss_now()
        with _Timed(profile, collect=False) as t:
            lib.save(state, ctx)
            if ctx.local and not lib.fsyncs_itself:
                fsync_tree(ctx.url)
        out.update(t.report("save"))
        if "client_requests" in ctx.extra:
            out["client_requests_save"] = ctx.extra.pop("client_requests")
        if t_spawn is not None:
            out["ttfc_s"] = t.end - t_spawn - excluded
        out["digest"] = digest(state.items())
        return out
    with _Timed(profile, collect=False) as t:
        loaded = lib.load(ctx)
    out.update(t.report("load"))
    if t_spawn is not None:
        out["first_load_s"] = t.end - t_spawn - excluded
    if "client_requests" in ctx.extra:
        out["client_requests_load"] = ctx.extra.pop("client_requests")
    out["load_digest"] = digest(loaded.items())
    del loaded
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["phase"] in ("load", "first-save"):
        return run_fresh(spec)
    from benchmarks.libs import LIBS, Ctx, fsync_tree
    from benchmarks.workloads import digest, make_state, workload_spec

    lib = LIBS[spec["lib"]]
    if spec.get("env"):
        os.environ.update(spec["env"])
    wspec = workload_spec(spec["workload"], spec["scale"])
    ctx = Ctx(spec["target"], spec["url"], spec.get("storage_options") or {}, wspec)
    lib.prepare(ctx)
    phase = spec["phase"]
    out: dict[str, Any] = {"pid": os.getpid()}
    profile = spec.get("profile")

    def durable() -> None:
        if ctx.local and not lib.fsyncs_itself:
            fsync_tree(ctx.url)

    def objects_in_memory() -> None:
        fs = ctx.fs()
        found = fs.find(ctx.fspath(), detail=True)
        out["objects"] = len(found)
        out["stored_bytes"] = sum(int(v.get("size") or 0) for v in found.values())

    if phase in ("save", "saveload", "async"):  # (load, first-save: run_fresh)
        state = lib.convert(make_state(wspec, spec.get("seed", 0)))
        out["state_rss"] = rss_now()
        if phase == "async":
            import numpy as np

            gc.collect()
            t0 = time.perf_counter()
            copy = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v.clone() for k, v in state.items()}
            out["copy_s"] = time.perf_counter() - t0
            del copy
            gc.collect()
            prepared = lib.async_prepare(state, ctx)
            with _Timed(profile) as t:
                tb = time.perf_counter()
                wait = lib.async_save(state, ctx, prepared)
                out["block_s"] = time.perf_counter() - tb
                wait()
                durable()
            out.update(t.report("async"))
        else:
            with _Timed(profile if phase == "save" else None) as t:
                lib.save(state, ctx)
                durable()
            out.update(t.report("save"))
            if "client_requests" in ctx.extra:
                out["client_requests_save"] = ctx.extra.pop("client_requests")
        out["digest"] = digest(state.items())
        del state
        gc.collect()
        if phase == "saveload":
            objects_in_memory()
    if phase == "saveload":
        with _Timed(None) as t:
            loaded = lib.load(ctx)
        out.update(t.report("load"))
        if "client_requests" in ctx.extra:
            out["client_requests_load"] = ctx.extra.pop("client_requests")
        out["load_digest"] = digest(loaded.items())
        del loaded
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = run(spec)
    except BaseException as exc:
        tb = traceback.format_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": tb[-4000:]}
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    # Some peers leave non-daemon threads / event loops behind; don't hang on them.
    os._exit(0)


if __name__ == "__main__":
    main()
