"""Train a small PyTorch model on a spot VM: checkpoints on S3, survive preemption, resume exactly.

    python examples/torch_spot_training.py                 # demo on a local moto S3 server (pip install 'moto[server]')
    python examples/torch_spot_training.py --bucket my-bucket --prefix runs/mlp     # train on real S3
    python examples/torch_spot_training.py --dir /tmp/run  # train on local disk (or any fsspec URL)

Training resumes from the newest checkpoint in the directory, if any: run
the same command again after a preemption. The training loop:

* ``Checkpoint(model=..., optimizer=..., scheduler=..., rng=...)`` names what
  a resume needs. Objects with ``state_dict()``/``load_state_dict()`` are
  saved and restored through those; the torch RNG too (dropout), through
  the small ``TorchRNG`` wrapper below;
* ``CheckpointManager(..., checkpoint_interval=N, async_save=True)`` saves
  every ``--save-every`` steps in the background and keeps the last 3;
* ``PreemptionCheckpointHandler(manager)`` turns SIGTERM (what GCE, AWS spot
  and Kubernetes send before they kill a machine) into one last checkpoint
  at a step boundary and a clean exit with status 143.

With neither ``--dir`` nor ``--bucket`` (or with ``--demo``) the script
preempts itself: it runs the training as a child process, sends it SIGTERM
after ``--kill-after`` steps, runs it again (it resumes), runs an
uninterrupted reference, and checks that the loss curves are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import cloudckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _spot_demo  # examples/_spot_demo.py


class TorchRNG:
    """torch's global RNG as a checkpointable object (dropout draws from it)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cpu": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data of one step: a pure function of the step, so a resumed run sees the same data."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 16, generator=g)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def train(args: argparse.Namespace, emit=_spot_demo.emit) -> None:
    """Train to ``args.steps``, resuming from the newest checkpoint; report each step with ``emit``."""
    directory, storage_options = _spot_demo.location(args)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)

    ckpt = cloudckpt.Checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, rng=TorchRNG(), step=0)
    manager = cloudckpt.CheckpointManager(
        ckpt,
        directory,
        max_to_keep=3,
        step_counter=lambda: ckpt.step,
        checkpoint_interval=args.save_every,  # save() below is a no-op between intervals
        storage_options=storage_options,
        async_save=True,
    )
    if manager.restore_or_initialize() is not None:
        emit(event="resumed", step=ckpt.step, checkpoint=manager.latest_checkpoint)

    with cloudckpt.PreemptionCheckpointHandler(manager, grace_period=30) as handler:
        while ckpt.step < args.steps:
            x, y = batch(ckpt.step)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ckpt.step += 1
            emit(step=ckpt.step, loss=loss.item())
            manager.save(checkpoint_number=ckpt.step)
            handler.check(ckpt.step)  # after SIGTERM: save this step, exit 143
            time.sleep(args.sleep)
        manager.save(checkpoint_number=ckpt.step, check_interval=False)  # skipped if saved at this step
        manager.sync()
    emit(event="done", step=ckpt.step, checkpoint=manager.latest_checkpoint)


def reference(args: argparse.Namespace) -> list[dict]:
    """An uninterrupted run in this process: the curve a resumed run must match."""
    return _spot_demo.reference(train, args)


def main() -> int:
    return _spot_demo.main(__file__, __doc__ or "", train)


if __name__ == "__main__":
    sys.exit(main())
