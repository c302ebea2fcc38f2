"""Train on S3, copy the checkpoints to GCS, resume the run there.

    python examples/cross_cloud_restore.py      # demo: local S3 (moto) and GCS (fake-gcs-server) emulators
    python examples/cross_cloud_restore.py --src s3://my-bucket/run-1 --dst gs://other-bucket/run-1

A run moves to another cloud (cheaper spot capacity, a quota, a region that
has GPUs) with three calls:

1. the job on AWS saves with a ``CheckpointManager`` on ``s3://...``;
2. ``cloudckpt.copy(src, dst)`` copies every committed checkpoint, streamed
   with bounded memory, every object's crc32c checked on the way, and the
   destination's manifests written last, create-only: an interrupted copy
   leaves nothing half-visible and resumes where it stopped;
3. the job on GCP opens a ``CheckpointManager`` on ``gs://...`` and calls
   ``restore_or_initialize()``: it resumes from the newest checkpoint.

The script checks that the run resumed on GCS ends with exactly the weights
and loss of a run that never moved. The model is a numpy linear regression
with momentum SGD, so that the example needs no deep-learning framework;
torch and jax state moves the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported (emulator)

import numpy as np

import cloudckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _spot_demo  # examples/_spot_demo.py


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(step)
    x = g.standard_normal((64, 8))
    return x, x @ np.arange(1.0, 9.0) + 0.01 * g.standard_normal(64)


def train(ckpt: cloudckpt.Checkpoint, manager: cloudckpt.CheckpointManager, until: int) -> float:
    """Momentum SGD on the arrays of ``ckpt``, in place; a checkpoint every 5 steps."""
    loss = float("nan")
    while ckpt.step < until:
        x, y = batch(ckpt.step)
        err = x @ ckpt.w - y
        loss = float(np.mean(err**2))
        ckpt.velocity *= 0.9
        ckpt.velocity += x.T @ err / len(y)
        ckpt.w -= 0.05 * ckpt.velocity
        ckpt.step += 1
        if ckpt.step % 5 == 0:
            manager.save(checkpoint_number=ckpt.step)
    return loss


def new_state() -> cloudckpt.Checkpoint:
    return cloudckpt.Checkpoint(w=np.zeros(8), velocity=np.zeros(8), step=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="where the first job saves: s3://bucket/prefix (or any fsspec URL)")
    parser.add_argument("--dst", help="where the run continues: gs://bucket/prefix (or any fsspec URL)")
    parser.add_argument("--src-endpoint-url", help="S3-compatible endpoint for --src (moto, MinIO)")
    parser.add_argument("--dst-endpoint-url", help="GCS endpoint for --dst (fake-gcs-server)")
    parser.add_argument("--steps", type=int, default=20, help="steps on the first cloud (then as many on the second)")
    args = parser.parse_args()

    servers = []
    try:
        if not (args.src and args.dst):  # the demo: both clouds emulated on this machine
            s3, s3_endpoint = _spot_demo.start_moto("cloudckpt-demo")
            gcs, gcs_endpoint = _spot_demo.start_fake_gcs("cloudckpt-demo")
            servers += [s3, gcs]
            args.src, args.src_endpoint_url = f"s3://cloudckpt-demo/run-{os.getpid()}", s3_endpoint
            args.dst, args.dst_endpoint_url = f"gs://cloudckpt-demo/run-{os.getpid()}", gcs_endpoint
        src_options = {"endpoint_url": args.src_endpoint_url} if args.src_endpoint_url else None
        dst_options = None
        if args.dst_endpoint_url:  # an emulator: no credentials
            dst_options = {"endpoint_url": args.dst_endpoint_url, "token": "anon", "project": "test"}

        # 1. the job on the first cloud
        ckpt = new_state()
        manager = cloudckpt.CheckpointManager(ckpt, args.src, max_to_keep=2, storage_options=src_options)
        manager.restore_or_initialize()
        train(ckpt, manager, args.steps)
        print("saved on the first cloud:", manager.checkpoints)

        # 2. move the run
        report = cloudckpt.copy(args.src, args.dst, src_storage_options=src_options, dst_storage_options=dst_options)
        print(f"copied {len(report.copied)} checkpoints to {args.dst}")

        # 3. a new job on the second cloud resumes
        moved = new_state()
        manager2 = cloudckpt.CheckpointManager(moved, args.dst, max_to_keep=2, storage_options=dst_options)
        resumed_from = manager2.restore_or_initialize()
        resumed_at = moved.step
        print("resumed from", resumed_from, "at step", resumed_at)
        loss = train(moved, manager2, 2 * args.steps)

        # the same run without moving, for comparison
        still = new_state()
        reference_loss = train(still, cloudckpt.CheckpointManager(still, "memory://cross-cloud-ref", 1), 2 * args.steps)
        same = bool(np.array_equal(moved.w, still.w)) and loss == reference_loss
        print(json.dumps({"resumed_from": resumed_from, "resumed_at_step": resumed_at,
                          "final_loss": loss, "identical": same, "latest": manager2.latest_checkpoint}))  # fmt: skip
        return 0 if same else 1
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
