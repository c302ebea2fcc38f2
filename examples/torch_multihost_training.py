"""Train with FSDP2 on several processes, survive a preemption, resume exactly.

    python examples/torch_multihost_training.py                   # demo: 4 local ranks, preempted and resumed
    python examples/torch_multihost_training.py --nproc 2 --dir /tmp/run --steps 40
    torchrun --nproc-per-node 4 examples/torch_multihost_training.py --dir s3://my-bucket/runs/mlp

The same script runs on one process or on N: cloudckpt takes the process
group from torch.distributed. Each rank holds a shard of the model and of
the Adam state (FSDP2 ``fully_shard``: ``DTensor`` parameters); a save
writes every rank's shards in parallel as global zarr arrays and rank 0
commits one manifest for all of them. What the training loop does:

* ``Checkpoint(model=..., optimizer=..., rng=..., data=PerRank(...), step=...)``:
  the model and optimizer state are sharded; each rank's RNG state and data
  position are its own (``cloudckpt.PerRank``);
* ``CheckpointManager(..., checkpoint_interval=N, async_save=True)``: saves
  every ``--save-every`` steps in the background on every rank, keeps 3;
* ``PreemptionCheckpointHandler(manager)``: a SIGTERM to *any* rank makes
  all ranks save the same step, then exit with status 143.

A restarted job resumes from the latest checkpoint, on the same or another
number of ranks (``--nproc``): each rank reads only its new shard.

With neither ``--dir`` nor ``--bucket`` (or with ``--demo``) the script runs
the demo on local disk: it trains on ``--nproc`` ranks, sends SIGTERM to rank
1 after ``--kill-after`` steps, runs the same command again (it resumes),
runs an uninterrupted reference, and checks that the loss curves are
identical; then it restores the last checkpoint in one plain process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import cloudckpt
from cloudckpt.testing.launch import launch

GLOBAL_BATCH = 16


class RankRNG:
    """This rank's torch RNG (dropout draws from it), saved per rank."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": cloudckpt.PerRank(torch.get_rng_state())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["torch"]
        if not saved.is_missing:  # a rank the saving job did not have keeps its own
            torch.set_rng_state(torch.as_tensor(np.asarray(saved.value), dtype=torch.uint8))


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the global batch of ``step``: a pure function of the step."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 24, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    per = GLOBAL_BATCH // world
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def train(args: argparse.Namespace) -> None:
    """One rank of the training job (run under torchrun, or by ``--nproc``)."""
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(24, 96), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(96, 96), torch.nn.GELU(),
        torch.nn.Linear(96, 1),
    )  # fmt: skip
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(100 + rank)  # dropout: a different stream on every rank

    ckpt = cloudckpt.Checkpoint(model=model, optimizer=optimizer, rng=RankRNG(), data=cloudckpt.PerRank(0), step=0)
    manager = cloudckpt.CheckpointManager(
        ckpt,
        args.dir,
        max_to_keep=3,
        step_counter=lambda: ckpt.step,
        checkpoint_interval=args.save_every,
        async_save=True,
        storage_options={"endpoint_url": args.endpoint_url} if args.endpoint_url else None,
    )
    if manager.restore_or_initialize() is not None and rank == 0:
        emit(event="resumed", step=ckpt.step, checkpoint=manager.latest_checkpoint, world=world)

    with cloudckpt.PreemptionCheckpointHandler(manager, grace_period=30) as handler:
        while ckpt.step < args.steps:
            x, y = batch(ckpt.step, rank, world)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            ckpt.step += 1
            ckpt.data = cloudckpt.PerRank(ckpt.data.value + len(x))  # samples this rank has seen
            total = loss.detach().clone()
            dist.all_reduce(total)
            emit(rank=rank, step=ckpt.step, loss=float(total) / world)
            manager.save(checkpoint_number=ckpt.step)
            handler.check(ckpt.step)  # after SIGTERM on any rank: all save this step, exit 143
            time.sleep(args.sleep)
        manager.save(checkpoint_number=ckpt.step, check_interval=False)
        manager.sync()
    if rank == 0:
        emit(event="done", step=ckpt.step, checkpoint=manager.latest_checkpoint)
    dist.destroy_process_group()


def run(args: argparse.Namespace, directory: str, nproc: int, kill_after: int | None = None) -> tuple[list[int], list[tuple[int, float]]]:
    """Run the training on ``nproc`` local ranks; SIGTERM rank 1 after step ``kill_after``."""
    argv = [sys.executable, os.path.abspath(__file__), "--dir", directory, "--steps", str(args.steps),
            "--save-every", str(args.save_every), "--sleep", str(args.sleep)]  # fmt: skip
    sent = []

    def watch(rank: int, line: str, procs: list[Any]) -> None:
        if kill_after is not None and not sent and line.startswith("{"):
            record = json.loads(line)
            if record.get("step") == kill_after and record.get("rank") == min(1, nproc - 1):
                sent.append(True)
                procs[min(1, nproc - 1)].send_signal(signal.SIGTERM)  # the platform preempts one machine

    results = launch(argv, nproc, on_line=watch, timeout=args.timeout)
    losses = [(r["step"], r["loss"]) for line in results[0].lines if line.startswith("{")
              for r in [json.loads(line)] if "loss" in r]  # fmt: skip
    for r in results:
        if r.returncode not in (0, 128 + signal.SIGTERM):
            sys.stderr.write(f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}\n")
    return [r.returncode for r in results], losses


def demo(args: argparse.Namespace) -> int:
    base = args.dir or tempfile.mkdtemp(prefix="cloudckpt-multihost-")
    first_codes, first = run(args, f"{base}/run", args.nproc, kill_after=args.kill_after)
    second_codes, second = run(args, f"{base}/run", args.nproc)
    _, reference = run(args, f"{base}/reference", args.nproc)
    latest = cloudckpt.latest_checkpoint(f"{base}/run")
    state = cloudckpt.load(latest) if latest else {}  # one plain process: whole arrays
    ok = (
        all(c == 128 + signal.SIGTERM for c in first_codes)
        and all(c == 0 for c in second_codes)
        and first + second == reference
        and bool(state)
    )
    summary = {
        "nproc": args.nproc,
        "exit_codes": [first_codes, second_codes],
        "preempted_after_step": first[-1][0] if first else None,
        "resumed_steps": [s for s, _ in second][:1],
        "identical": ok,
        "latest": latest,
        "restored_in_one_process": {k: list(v.shape) for k, v in state.get("model", {}).items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"run 1 on {args.nproc} ranks: SIGTERM to rank 1 after step {args.kill_after}; every rank saved step "
              f"{summary['preempted_after_step']} and exited {sorted(set(first_codes))}")  # fmt: skip
        print(f"run 2: resumed and finished, exit {sorted(set(second_codes))}")
        print(f"loss curve identical to an uninterrupted run: {ok}")
        print(f"{latest} restored in one plain process: {summary['restored_in_one_process']}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="checkpoint directory: a local path or any fsspec URL (s3://, gs://)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    p.add_argument("--nproc", type=int, default=4, help="ranks to start here (not under torchrun)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--kill-after", type=int, default=8, help="demo: SIGTERM rank 1 after this step")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds per step")
    p.add_argument("--timeout", type=float, default=600, help="demo: seconds before a hung run is killed")
    p.add_argument("--demo", action="store_true", help="preempt, resume and compare (default without --dir)")
    p.add_argument("--json", action="store_true", help="demo: print the summary as JSON")
    args = p.parse_args()
    if "RANK" in os.environ:  # a rank of a job (torchrun, or started by this script)
        if not args.dir:
            p.error("--dir is required for a rank")
        train(args)
        return 0
    if args.demo or not args.dir:
        return demo(args)
    codes, _ = run(args, args.dir, args.nproc)
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
