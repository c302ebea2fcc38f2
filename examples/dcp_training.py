"""Train with FSDP2 and save with PyTorch DCP into cloudckpt checkpoints; resume on another world size.

    python examples/dcp_training.py                     # demo: 2 local ranks, stop, resume on 1 rank, check
    python examples/dcp_training.py --dir /tmp/run --nproc 2 --steps 12
    torchrun --nproc-per-node 4 examples/dcp_training.py --dir s3://my-bucket/runs/mlp --steps 100

The training loop is DCP's own: the state is ``get_state_dict(model, optimizer)``
(FSDP2 ``DTensor`` shards on every rank) and it is saved with
``dcp.async_save`` / restored with ``dcp.load``. Only the storage is cloudckpt's:

* ``cloudckpt.dcp.Writer(manager=manager)``: every save is the manager's next
  numbered checkpoint (``ckpt-<n>``), committed create-only by DCP's
  ``finish()``, with crc32c checksums; the manager keeps the last 2 and fences a
  stale job that still writes to the directory;
* ``cloudckpt.dcp.Reader(manager.latest_checkpoint)``: DCP reads the shards each
  rank needs, on any number of ranks (resharding);
* ``cloudckpt.load(url)`` reads the same checkpoint in one plain process,
  without torch.distributed: a dict keyed by DCP's flattened names.

The demo trains ``--steps`` on ``--nproc`` ranks and stops halfway (a job that
ends), resumes on ``--resume-nproc`` ranks from the latest checkpoint, and
checks that the restored model equals, bit for bit, the one saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import cloudckpt
import cloudckpt.dcp
from cloudckpt.testing.launch import launch

GLOBAL_BATCH = 16


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def build(world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.GELU(), torch.nn.Linear(96, 1))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3)


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 24, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    per = GLOBAL_BATCH // world
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def fingerprint(arrays: dict[str, Any]) -> dict[str, int]:
    """A crc32 of every array's bytes: equal fingerprints are bit-identical arrays."""
    return {k: zlib.crc32(np.ascontiguousarray(np.asarray(v)).tobytes()) for k, v in sorted(arrays.items())}


def train(args: argparse.Namespace) -> None:
    """One rank of the job (under torchrun, or started by the demo)."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, optimizer = build(world)
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    # async saves run their collectives in a background thread while training runs its own:
    # they get a process group of their own (DCP's advice), and so does the manager deciding in them
    ckpt_group = dist.new_group(backend="gloo")
    manager = cloudckpt.CheckpointManager(
        cloudckpt.Checkpoint(), args.dir, max_to_keep=2, storage_options=options, process_group=ckpt_group
    )
    writer = cloudckpt.dcp.Writer(manager=manager, storage_options=options)
    step = 0
    latest = manager.latest_checkpoint
    if latest is not None:  # resume: DCP reads each rank's shards of the saved (global) arrays
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd, "step": 0}
        dcp.load(state, storage_reader=cloudckpt.dcp.Reader(latest, storage_options=options))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        step = state["step"]
        full = {f"model.{k}": v.full_tensor() for k, v in get_state_dict(model, optimizer)[0].items()}
        if rank == 0:
            emit(event="resumed", step=int(step), checkpoint=latest, world=world, crc=fingerprint(full))
    pending = None
    while step < args.stop_at:
        x, y = batch(step, rank, world)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        step += 1
        if step % args.save_every == 0 or step == args.stop_at:
            if pending is not None:
                pending.result()  # one upload in flight at a time
            msd, osd = get_state_dict(model, optimizer)
            pending = dcp.async_save({"model": msd, "optim": osd, "step": step}, storage_writer=writer, process_group=ckpt_group)
    if pending is not None:
        pending.result()
    if rank == 0:
        emit(event="done", step=step, checkpoint=manager.latest_checkpoint, checkpoints=manager.checkpoints)
    dist.barrier(group=ckpt_group)  # no collective of either group may still run when the groups go
    dist.barrier()
    dist.destroy_process_group(ckpt_group)
    dist.destroy_process_group()


def run(args: argparse.Namespace, nproc: int, stop_at: int) -> list[dict[str, Any]]:
    argv = [sys.executable, os.path.abspath(__file__), "--dir", args.dir, "--steps", str(args.steps),
            "--save-every", str(args.save_every), "--stop-at", str(stop_at)]  # fmt: skip
    results = launch(argv, nproc, timeout=args.timeout)
    for r in results:
        if r.returncode != 0:
            raise SystemExit(f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return [json.loads(line) for line in results[0].lines if line.startswith("{")]


def demo(args: argparse.Namespace) -> int:
    args.dir = args.dir or f"{tempfile.mkdtemp(prefix='cloudckpt-dcp-')}/run"
    half = args.steps // 2
    first = run(args, args.nproc, half)
    saved = cloudckpt.load(cloudckpt.latest_checkpoint(args.dir))  # one plain process, no torch.distributed
    second = run(args, args.resume_nproc, args.steps)
    latest = cloudckpt.latest_checkpoint(args.dir)
    final = cloudckpt.load(latest)
    resumed = next(e for e in second if e.get("event") == "resumed")
    expected = fingerprint({k: v for k, v in saved.items() if k.startswith("model.")})
    ok = resumed["step"] == half and resumed["crc"] == expected and final["model.0.weight"].shape == saved["model.0.weight"].shape
    summary = {
        "first": {"nproc": args.nproc, "steps": first[-1]["step"], "checkpoints": first[-1]["checkpoints"]},
        "resumed": {"nproc": args.resume_nproc, "from_step": resumed["step"], "checkpoint": resumed["checkpoint"]},
        "latest": latest,
        "kept": second[-1]["checkpoints"],
        "bit_identical": resumed["crc"] == expected,
        "keys": sorted(k for k in final if k.startswith("model."))[:4],
        "ok": bool(ok),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {half} steps on {args.nproc} ranks; saved with dcp.async_save: {summary['first']['checkpoints']}")
        print(f"resumed on {args.resume_nproc} rank(s) from step {resumed['step']} ({resumed['checkpoint']}); "
              f"restored model bit-identical to the saved one: {resumed['crc'] == expected}")  # fmt: skip
        print(f"kept (max_to_keep=2): {summary['kept']}")
        print(f"read in one plain process by cloudckpt.load: {summary['keys']} ... "
              f"model.0.weight {list(np.shape(final['model.0.weight']))}")  # fmt: skip
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="checkpoint directory: a local path or any fsspec URL (s3://, gs://)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    p.add_argument("--nproc", type=int, default=2, help="demo: ranks of the first run")
    p.add_argument("--resume-nproc", type=int, default=1, help="demo: ranks of the resumed run")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--stop-at", type=int, default=None, help="a rank: stop after this step (default --steps)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true", help="demo: print the summary as JSON")
    args = p.parse_args()
    if "RANK" in os.environ:
        if not args.dir:
            p.error("--dir is required for a rank")
        args.stop_at = args.stop_at or args.steps
        train(args)
        return 0
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
