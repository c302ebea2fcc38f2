"""One rank of one multi-host measurement (``benchmarks/multihost.py`` starts N of them).

    python -m benchmarks.multihost_rank '<json spec>'     # one rank (RANK, WORLD_SIZE, ... set)
    python -m benchmarks.multihost_rank --zygote          # a rank factory (see below)

A rank has ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
its environment, like under torchrun. It is started either as a new
interpreter by :func:`cloudckpt.testing.launch.launch` (``--exec`` of the
driver), or, by default, forked by a *zygote*: a process that only imported
torch, torch.distributed, cloudckpt and s3fs, and forks the N ranks of each
measurement on request. Both give every measurement new processes with no
state of an earlier one; the zygote saves the ~5-15 s per rank that importing
torch costs on a loaded 2-core machine. Every rank joins a gloo group and
builds the same FSDP2-sharded model (:func:`build`), then:

* ``save``: one AdamW step on a deterministic global batch (untimed), then
  barrier, save, [make durable], barrier (timed); then the digest of every
  tensor of the model and optimizer state, whole (collective, untimed).
* ``load``: a freshly built and sharded model with other initial values and
  a fresh optimizer given its zero state (untimed, ``optim_init_s``); barrier,
  load, barrier (timed); then the same digest of what was restored. The
  parent compares it with the save's.

Each rank prints one line ``RESULT <json>``: its wall time from barrier to
barrier (every rank's is about the same: the last barrier waits for the
slowest), its own time until its save/load call returned, peak RSS, and the
requests it made in the timed region (client side: cloudckpt's storage-layer
operations via ``cloudckpt.storage.add_global_hook``; S3 API calls via
wrappers on ``s3fs.S3FileSystem._call_s3``/``call_s3``, for both libraries; file opens by
torch DCP's ``FileSystem.create_stream`` on local disk).
"""

from __future__ import annotations

import datetime
import gc
import itertools
import json
import math
import os
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from benchmarks.child import peak_rss, reset_peak, rss_now

GLOBAL_BATCH = 16
SEQ = 8


# ------------------------------------------------------------------ the state


def dims(scale: float) -> dict[str, int]:
    """Model dimensions at ``scale`` (1.0: d_model 512, vocab 8192, 6 blocks, ~328 MB of model + AdamW state).

    Widths grow with sqrt(scale), so bytes grow about linearly and the tensor count stays fixed.

    Example:
        >>> dims(1.0)
        {'d': 512, 'vocab': 8192, 'layers': 6}
        >>> dims(0.25)
        {'d': 256, 'vocab': 4096, 'layers': 6}
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    r = math.sqrt(scale)
    return {"d": max(16, round(512 * r / 16) * 16), "vocab": max(64, round(8192 * r / 64) * 64), "layers": 6}


def state_nbytes(scale: float) -> tuple[int, int]:
    """(bytes, tensors) of model + AdamW state (params, exp_avg, exp_avg_sq, a 0-d step per param), float32.

    Example:
        >>> n, t = state_nbytes(1.0); round(n / 1e6), t
        (328, 308)
    """
    g = dims(scale)
    d, v, n_layers = g["d"], g["vocab"], g["layers"]
    shapes = [(v, d)]
    for _ in range(n_layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    shapes += [(d,), (d,), (v, d), (v,)]
    numel = sum(math.prod(s) for s in shapes)
    return numel * 4 * 3 + len(shapes) * 4, len(shapes) * 4


def build(scale: float, seed: int) -> tuple[Any, Any]:
    """The model (embedding, ``layers`` blocks of LayerNorm + 4 Linear, head), FSDP2-sharded, and AdamW."""
    import torch
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    g = dims(scale)
    d, vocab = g["d"], g["vocab"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln_2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.out = nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            q, k, v = self.qkv(self.ln_1(x)).chunk(3, dim=-1)
            x = x + self.proj(q * torch.sigmoid(k) + v)
            return x + self.out(torch.nn.functional.gelu(self.fc(self.ln_2(x))))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block() for _ in range(g["layers"]))
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab)

        def forward(self, tokens: Any) -> Any:
            x = self.embed(tokens)
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln_f(x))

    torch.manual_seed(seed)
    model = Model()
    for b in model.blocks:
        fully_shard(b)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, opt


def train_step(model: Any, opt: Any, rank: int, world: int, scale: float) -> None:
    """One AdamW step on this rank's slice of a deterministic global batch."""
    import torch

    vocab = dims(scale)["vocab"]
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=gen)
    per = GLOBAL_BATCH // world
    mine = tokens[rank * per : (rank + 1) * per]
    logits = model(mine[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), mine[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()


def digests(model: Any, opt: Any) -> dict[str, str]:
    """crc32c of every tensor of the model and optimizer state, whole (a collective: every rank calls it)."""
    import crc32c
    import numpy as np
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.tensor import DTensor

    msd, osd = get_state_dict(model, opt)
    out: dict[str, str] = {}

    def add(name: str, t: Any) -> None:
        whole = t.full_tensor() if isinstance(t, DTensor) else t
        a = np.ascontiguousarray(whole.detach().cpu().numpy())
        head = f"{a.dtype.str}:{a.shape};".encode()
        out[name] = f"{crc32c.crc32c(memoryview(a.reshape(-1).view(np.uint8)), crc32c.crc32c(head)):08x}"

    for k in sorted(msd):
        add(f"model.{k}", msd[k])
    for fqn in sorted(osd["state"]):
        for k in sorted(osd["state"][fqn]):
            add(f"optim.{fqn}.{k}", osd["state"][fqn][k])
    return out


# ------------------------------------------------------------------ request counting


class Counts:
    """Per-rank request counters, active only inside the timed region."""

    def __init__(self) -> None:
        self.on = False
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()  # cloudckpt storage-layer operations
        self.http: Counter[str] = Counter()  # S3 API calls (s3fs), both libraries
        self.opens: Counter[str] = Counter()  # torch DCP FileSystem.create_stream (local disk)
        self.trace: list[str] | None = None  # with spec["trace"]: every cloudckpt operation and URL

    def add(self, which: Counter[str], key: str) -> None:
        if self.on:
            with self.lock:
                which[key] += 1

    def install(self, lib: str, target: str) -> None:
        if lib.startswith("cloudckpt"):
            from cloudckpt.storage import add_global_hook

            def hook(op: str, url: str) -> None:
                self.add(self.ops, op)
                if self.on and self.trace is not None:
                    self.trace.append(f"{op} {url}")

            add_global_hook(hook)
        if target.startswith("s3"):
            import s3fs

            orig = s3fs.S3FileSystem._call_s3
            counts = self

            async def _call_s3(fs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
                counts.add(counts.http, method)
                return await orig(fs, method, *args, **kwargs)

            # s3fs files (DCP's writes) go through call_s3, a sync wrapper of the original _call_s3
            orig_sync = s3fs.S3FileSystem.call_s3

            def call_s3(fs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
                counts.add(counts.http, method)
                return orig_sync(fs, method, *args, **kwargs)

            s3fs.S3FileSystem._call_s3 = _call_s3  # type: ignore[method-assign]
            s3fs.S3FileSystem.call_s3 = call_s3  # type: ignore[method-assign]
        if lib.startswith("dcp") and target == "local":
            import contextlib

            from torch.distributed.checkpoint.filesystem import FileSystem

            orig_cs = FileSystem.create_stream.__wrapped__  # type: ignore[attr-defined]
            counts = self

            @contextlib.contextmanager
            def create_stream(fs: Any, path: Any, mode: str) -> Any:
                counts.add(counts.opens, "write" if "w" in mode else "read")
                yield from orig_cs(fs, path, mode)

            FileSystem.create_stream = create_stream  # type: ignore[method-assign]

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("ops", "http", "opens"):
            c = getattr(self, name)
            if c:
                out[name] = {**dict(sorted(c.items())), "total": sum(c.values())}
        return out


# ------------------------------------------------------------------ the libraries


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(lib: str, model: Any, opt: Any, spec: dict[str, Any], rank: int) -> float | None:
    """Save; for the ``-async`` libraries (``dcp.async_save``) return the seconds the caller was blocked."""
    url, so, local = spec["url"], spec.get("storage_options") or {}, spec["target"] == "local"
    if lib == "cloudckpt":
        import cloudckpt

        cloudckpt.Checkpoint(model=model, optimizer=opt).write(url, storage_options=so or None)
        return None
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    base, is_async = lib.removesuffix("-async"), lib.endswith("-async")
    if base == "cloudckpt-dcp":  # cloudckpt's StorageWriter under DCP's own save
        import cloudckpt.dcp

        writer: Any = cloudckpt.dcp.Writer(url, storage_options=so or None)
    elif local:
        writer = dcp.FileSystemWriter(url)  # sync_files=True (default): fsync of each file it writes
    else:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        # sync_files=False: an s3fs file has no fileno(), so sync_files=True makes DCP call os.sync()
        # (a machine-wide flush of the page cache) per file, which adds nothing on S3
        writer = FsspecWriter(url, sync_files=False, **so)
    blocked = None
    if is_async:  # blocked: until async_save returns (state staged to host memory); the upload is waited for below
        t0 = time.perf_counter()
        fut = dcp.async_save({"model": msd, "optim": osd}, storage_writer=writer, process_group=_side_group())
        blocked = time.perf_counter() - t0
        fut.result()
    else:
        dcp.save({"model": msd, "optim": osd}, storage_writer=writer)
    if local and base == "dcp":
        # DCP fsyncs its files (and .metadata before renaming it) but never a directory: make the
        # new directory entries durable too, as cloudckpt does, inside the timed region
        dist.barrier()
        if rank == 0:
            fsync_dir(url)
            fsync_dir(os.path.dirname(os.path.abspath(url)))
    return blocked


_SIDE: list[Any] = []


def _side_group() -> Any:
    """A gloo group of its own for async saves (DCP's advice: their collectives run in a thread)."""
    if not _SIDE:
        import torch.distributed as dist

        _SIDE.append(dist.new_group(backend="gloo"))
    return _SIDE[0]


def load(lib: str, model: Any, opt: Any, spec: dict[str, Any]) -> None:
    url, so, local = spec["url"], spec.get("storage_options") or {}, spec["target"] == "local"
    if lib == "cloudckpt":
        import cloudckpt

        cloudckpt.Checkpoint(model=model, optimizer=opt).read(url, storage_options=so or None)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)  # gives a fresh optimizer its (zero) state first
    sd = {"model": msd, "optim": osd}
    if lib.removesuffix("-async") == "cloudckpt-dcp":
        import cloudckpt.dcp

        reader: Any = cloudckpt.dcp.Reader(url, storage_options=so or None)
    elif local:
        reader = dcp.FileSystemReader(url)
    else:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        reader = FsspecReader(url, **so)
    dcp.load(sd, storage_reader=reader)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def prepare(lib: str, target: str) -> None:
    """Imports and one-time set-up outside the timed region (as the adapters of benchmarks/libs/ do)."""
    if lib.startswith("cloudckpt"):
        import zarr.core.dtype  # noqa: F401
    if lib.startswith("cloudckpt-dcp"):
        import cloudckpt.dcp  # noqa: F401
    if lib != "cloudckpt":
        import torch.distributed.checkpoint
        import torch.distributed.checkpoint.state_dict

        if target != "local":
            import torch.distributed.checkpoint._fsspec_filesystem  # noqa: F401
    if target != "local":
        import s3fs  # noqa: F401


# ------------------------------------------------------------------ main


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # N ranks share the machine's cores, as N processes per host would
    marks = {"start": time.perf_counter()}
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(spec.get("collective_timeout", 600))))
    rank, world = dist.get_rank(), dist.get_world_size()
    lib, phase, scale = spec["lib"], spec["phase"], float(spec["scale"])
    out: dict[str, Any] = {"rank": rank, "world": world, "pid": os.getpid()}
    try:
        prepare(lib, spec["target"])
        counts = Counts()
        counts.install(lib, spec["target"])
        marks["init"] = time.perf_counter()
        if spec.get("trace"):
            counts.trace = []
        if phase == "save":
            model, opt = build(scale, seed=0)
            train_step(model, opt, rank, world, scale)
        else:
            model, opt = build(scale, seed=1)  # other values everywhere: the load must overwrite them all
            # A fresh optimizer has no state to load into. Both libraries first give it zero state with
            # one zero-gradient step (DCP in get_state_dict, cloudckpt in Checkpoint.read); in a fresh
            # process that step costs 1-3 s here (cold DTensor sharding propagation) whatever the state
            # size, so it is done here, untimed and the same way for both, and reported as optim_init_s.
            from torch.distributed.checkpoint.state_dict import get_state_dict

            t_init = time.perf_counter()
            get_state_dict(model, opt)
            out["optim_init_s"] = time.perf_counter() - t_init
        if lib == "cloudckpt":
            # cloudckpt creates its gloo side group at its first collective; every training job has
            # one by its first save, so create it here, untimed (a collective of all ranks)
            from cloudckpt.distributed.group import resolve_group

            resolve_group(None)
        marks["state"] = time.perf_counter()
        gc.collect()
        prof = None
        if spec.get("profile"):
            import cProfile

            prof = cProfile.Profile()
        out["state_rss"] = rss_now()
        dist.barrier()
        out["rss_base"] = rss_now()
        out["rss_reset_ok"] = reset_peak()
        counts.on = True
        if prof is not None:
            prof.enable()
        t0, out["blocking_s"] = _timed(lib, phase, model, opt, spec, rank)
        own = time.perf_counter() - t0
        dist.barrier()
        total = time.perf_counter() - t0
        if prof is not None:
            prof.disable()
            prof.dump_stats(f"{spec['profile']}-rank{rank}.prof")
        counts.on = False
        out.update(seconds=total, own_s=own, rss_peak=peak_rss())
        out["rss_delta"] = max(0, out["rss_peak"] - out["rss_base"]) if out["rss_reset_ok"] else None
        out["requests"] = counts.report()
        if counts.trace is not None:
            out["trace"] = counts.trace
        marks["timed"] = time.perf_counter()
        dg = digests(model, opt)
        if rank == 0:
            out["digests"] = dg
        marks["verify"] = time.perf_counter()
        names = list(marks)
        out["untimed_s"] = {b: round(marks[b] - marks[a], 3) for a, b in itertools.pairwise(names)}
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    return out


def _timed(lib: str, phase: str, model: Any, opt: Any, spec: dict[str, Any], rank: int) -> tuple[float, float | None]:
    """Run the timed save or load: its start time and, for an async save, the seconds it blocked."""
    if lib.endswith("-async") and phase == "save":
        import torch.distributed as dist

        _side_group()  # created untimed, as a training job has it by its first save
        dist.barrier()
    t0 = time.perf_counter()
    if phase == "save":
        return t0, save(lib, model, opt, spec, rank)
    load(lib, model, opt, spec)
    return t0, None


def rank_main(spec: dict[str, Any]) -> None:
    """Run one rank and print its ``RESULT`` line (never raises)."""
    try:
        result = run(spec)
    except BaseException as exc:
        result = {"rank": int(os.environ.get("RANK", -1)), "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ the zygote


def preload() -> None:
    """Import everything a rank needs (nothing is initialized: no process group, no thread pools in use)."""
    import crc32c  # noqa: F401
    import numpy  # noqa: F401
    import s3fs  # noqa: F401
    import torch
    import torch.distributed
    import torch.distributed.checkpoint
    import torch.distributed.checkpoint._fsspec_filesystem
    import torch.distributed.checkpoint.state_dict
    import torch.distributed.fsdp
    import torch.distributed.tensor  # noqa: F401
    import zarr.core.dtype  # noqa: F401



def fork_ranks(req: dict[str, Any]) -> list[dict[str, Any]]:
    """Fork ``req["nproc"]`` ranks running ``req["spec"]``; wait (``req["timeout"]`` s, then SIGKILL)."""
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    n, logdir = int(req["nproc"]), req["logdir"]
    files = [(os.path.join(logdir, f"rank{r}.out"), os.path.join(logdir, f"rank{r}.err")) for r in range(n)]
    sys.stdout.flush()
    sys.stderr.flush()
    pids: dict[int, int] = {}
    for r in range(n):
        pid = os.fork()
        if pid == 0:  # the rank
            code = 70
            try:
                fd = os.open(os.devnull, os.O_RDONLY)
                os.dup2(fd, 0)
                for path, target in zip(files[r], (1, 2), strict=True):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, target)
                    os.close(fd)
                os.environ.update(req.get("env") or {})
                os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                rank_main(req["spec"])
                code = 0
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        pids[r] = pid
    deadline = time.monotonic() + float(req.get("timeout", 1800))
    codes: dict[int, int] = {}
    while len(codes) < n:
        for r, pid in pids.items():
            if r in codes:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[r] = os.waitstatus_to_exitcode(status)
        if len(codes) < n:
            if time.monotonic() > deadline:
                for r, pid in pids.items():
                    if r not in codes:
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
    out = []
    for r in range(n):
        with open(files[r][0], errors="replace") as f:
            lines = f.read().splitlines()
        with open(files[r][1], errors="replace") as f:
            err = f.read()
        out.append({"rank": r, "returncode": codes[r], "lines": lines, "stderr": err[-20000:]})
        for path in files[r]:
            os.unlink(path)
    return out


def zygote() -> None:
    """Read requests (JSON lines) on stdin; answer each with the ranks' results (one JSON line)."""
    preload()
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    print("READY", file=proto, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        print(json.dumps({"id": req.get("id"), "ranks": fork_ranks(req)}), file=proto, flush=True)


def main() -> None:
    if sys.argv[1:] == ["--zygote"]:
        zygote()
        return
    rank_main(json.loads(sys.argv[1]))
    os._exit(0)  # some libraries leave non-daemon threads behind


if __name__ == "__main__":
    main()
