"""Train a tiny Hugging Face GPT-2 with its checkpoints on S3 (or any URL) through cloudckpt's CheckpointManager.

    python examples/huggingface_training.py --dir /tmp/hf-run            # local disk (or memory://, gs://...)
    python examples/huggingface_training.py --bucket my-bucket --prefix runs/gpt2   # S3 (credentials as for boto3)
    python examples/huggingface_training.py --dir /tmp/hf-run --kill-at 6  # dies by SIGKILL at step 6; run again

Nothing is downloaded: the model is built from a ``GPT2Config``. What it takes:

* ``CheckpointManagerCallback(url, max_to_keep=2)`` in ``Trainer(callbacks=[...])``:
  where the ``Trainer`` would write ``checkpoint-N`` (``save_strategy="steps"``),
  the model, optimizer, scheduler, RNG states and trainer state go to
  ``<url>/ckpt-N`` instead, through a CheckpointManager (create-only commit,
  crc32c, retention, ownership);
* ``trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint(trainer))``:
  resumes from the latest checkpoint of ``<url>`` (a fresh start if there is none).

Run it again after it died: it resumes and ends exactly where an
uninterrupted run ends. Prints one JSON object per line: ``resumed`` (the
step of the loaded checkpoint), ``step`` (each step's loss), ``done`` (a
sha256 of the final weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from cloudckpt.integrations.huggingface import CheckpointManagerCallback


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


class Report(TrainerCallback):
    """Print each step's loss; with ``kill_at``, die by SIGKILL at that step (a spot VM going away)."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            emit(event="step", step=state.global_step, loss=logs["loss"])
        if state.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 64, (32, 16), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def train(url: str, storage_options: dict[str, Any] | None, max_steps: int, save_steps: int,
          kill_at: int | None = None, output_dir: str | None = None) -> str:  # fmt: skip
    """Train to ``max_steps``, resuming from the latest checkpoint at ``url``; return a digest of the weights."""
    set_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="hf-out-"), max_steps=max_steps,
        per_device_train_batch_size=4, learning_rate=5e-3, lr_scheduler_type="linear", warmup_steps=2,
        save_strategy="steps", save_steps=save_steps, logging_steps=1, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    checkpoints = CheckpointManagerCallback(url, max_to_keep=2, storage_options=storage_options)
    trainer = Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=dataset(),
                      callbacks=[checkpoints, Report(kill_at)])  # fmt: skip
    resume = checkpoints.resume_from_checkpoint(trainer)  # None: nothing saved yet, a fresh start
    if resume is not None:
        emit(event="resumed", step=int(checkpoints.resumed_from.rsplit("-", 1)[-1]), checkpoint=checkpoints.resumed_from)
    trainer.train(resume_from_checkpoint=resume)
    h = hashlib.sha256()
    for name, t in trainer.model.state_dict().items():
        h.update(name.encode() + t.numpy().tobytes())
    emit(event="done", step=trainer.state.global_step, digest=h.hexdigest())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="a local directory or any fsspec URL (s3://, gs://, memory://)")
    parser.add_argument("--bucket", help="an S3 bucket (credentials from the environment, as for boto3)")
    parser.add_argument("--prefix", default="cloudckpt-example/gpt2", help="key prefix in --bucket")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--kill-at", type=int, help="die by SIGKILL after this step (to see the resume)")
    args = parser.parse_args()
    if args.bucket:
        url = f"s3://{args.bucket}/{args.prefix.strip('/')}"
        options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    else:
        url, options = args.dir or tempfile.mkdtemp(prefix="hf-run-"), None
    train(url, options, args.max_steps, args.save_steps, args.kill_at)
    return 0


if __name__ == "__main__":
    sys.exit(main())
