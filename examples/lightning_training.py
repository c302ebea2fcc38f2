"""Train a small PyTorch Lightning model with its checkpoints on S3 (or any URL) through cloudckpt.

    python examples/lightning_training.py --dir /tmp/lightning-run          # local disk (or memory://, gs://...)
    python examples/lightning_training.py --bucket my-bucket --prefix runs/lit  # S3 (credentials as for boto3)
    python examples/lightning_training.py --bucket b --endpoint-url http://127.0.0.1:9000   # MinIO, moto...

Run the same command again after the machine died (even ``kill -9``): it
resumes with ``trainer.fit(..., ckpt_path="last")`` from the last committed
checkpoint and ends exactly where an uninterrupted run ends. What it takes:

* ``Trainer(plugins=[CloudCheckpointIO(storage_options)])``: every checkpoint is
  a cloudckpt checkpoint (zarr v3 + a create-only manifest, crc32c checked on load, no pickle);
* ``CloudModelCheckpoint(dirpath=<url>, monitor=..., save_top_k=2, save_last=True)``:
  Lightning's ``ModelCheckpoint`` and its retention, which the plugin applies
  through a commit-aware delete that never removes the checkpoint the run
  resumed from; the subclass only makes ``ckpt_path="last"`` find ``last.ckpt``
  on an object store (Lightning-AI/pytorch-lightning#18261);
* Lightning lists ``dirpath`` itself (to find ``last.ckpt``) with fsspec, so the
  S3 endpoint goes into ``fsspec.config.conf`` too.

Prints one JSON object per line: ``resumed`` (epoch and step of the loaded
checkpoint), ``start`` (an epoch starts: the previous one's checkpoints are
committed), ``epoch`` (a finished epoch and its mean loss), ``done`` (a
sha256 of the final weights and optimizer state).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from typing import Any

import fsspec
import lightning as L
import torch

from cloudckpt.integrations.lightning import CloudCheckpointIO, CloudModelCheckpoint


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 3e-3, sleep: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()  # numbers only: stored in the checkpoint without pickle
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        time.sleep(self.hparams.sleep)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        emit(event="resumed", epoch=checkpoint["epoch"], step=checkpoint["global_step"])

    def on_train_epoch_start(self) -> None:  # the previous epoch's checkpoints are committed by now
        emit(event="start", epoch=self.current_epoch)

    def on_train_epoch_end(self) -> None:
        emit(event="epoch", epoch=self.current_epoch, loss=float(self.trainer.callback_metrics["train_loss"]))


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(256, 16, generator=g)
    dataset = torch.utils.data.TensorDataset(x, torch.sin(x.sum(dim=1, keepdim=True)))
    return torch.utils.data.DataLoader(dataset, batch_size=32)  # fixed order: a resumed epoch sees the same batches


def digest(trainer: L.Trainer) -> str:
    """sha256 of the final weights and optimizer state: equal only if every bit is."""
    h = hashlib.sha256()
    for name, t in sorted(trainer.lightning_module.state_dict().items()):
        h.update(name.encode() + t.numpy().tobytes())
    for i, s in sorted(trainer.optimizers[0].state_dict()["state"].items()):
        for k, t in sorted(s.items()):
            h.update(f"{i}/{k}".encode() + torch.as_tensor(t).numpy().tobytes())
    return h.hexdigest()


def train(directory: str, storage_options: dict[str, Any] | None, epochs: int, sleep: float = 0.0) -> str:
    """Train to ``epochs``, resuming from ``<directory>/last.ckpt`` if it exists; return the final digest."""
    L.seed_everything(0, verbose=False)
    if storage_options and directory.startswith("s3://"):
        fsspec.config.conf.setdefault("s3", {}).update(storage_options)  # for Lightning's own listing
    checkpoints = CloudModelCheckpoint(dirpath=directory, monitor="train_loss", save_top_k=2, save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs,
        plugins=[CloudCheckpointIO(storage_options)],
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(Regressor(sleep=sleep), data(), ckpt_path="last")
    result = digest(trainer)
    emit(event="done", epoch=trainer.current_epoch, step=trainer.global_step, digest=result,
         best=checkpoints.best_model_path)  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="a local directory or any fsspec URL (s3://, gs://, memory://)")
    parser.add_argument("--bucket", help="an S3 bucket (credentials from the environment, as for boto3)")
    parser.add_argument("--prefix", default="cloudckpt-example/lightning", help="key prefix in --bucket")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per batch (to kill it by hand)")
    args = parser.parse_args()
    if args.bucket:
        directory = f"s3://{args.bucket}/{args.prefix.strip('/')}"
        options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    else:
        directory, options = args.dir or tempfile.mkdtemp(prefix="lightning-run-"), None
    train(directory, options, args.epochs, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
