"""The examples run, small, as a user runs them (subprocesses; each skips without its framework).

The training examples are preempted for real: SIGTERM from outside while
they train against S3 (moto), then restarted; the resumed run must continue
at the step the preemption checkpoint was saved at, and the loss curve of
the two runs must equal, float for float, that of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import cloudckpt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import _spot_demo  # noqa: E402  (examples/_spot_demo.py)
import servers  # noqa: E402  (tests/servers.py)

STEPS = 8


@pytest.mark.parametrize(
    ("script", "framework"),
    [("torch_spot_training.py", "torch"), ("jax_training.py", "jax")],
    ids=["torch", "jax"],
)
def test_training_example_survives_preemption_on_s3(script: str, framework: str, s3_server, s3_bucket, tmp_path) -> None:
    fw = pytest.importorskip(framework, reason=f"{framework} is not installed")
    prefix = f"examples/{framework}-{uuid.uuid4().hex[:8]}"
    common = [str(EXAMPLES / script), "--steps", str(STEPS), "--save-every", "3"]
    on_s3 = ["--bucket", s3_bucket, "--endpoint-url", s3_server.endpoint_url, "--prefix", prefix]

    # 1. the example trains on S3 in a process of its own and is sent SIGTERM after step 2:
    #    its handler saves the step it is at and exits with 143
    rc1, first = _spot_demo.run_child([*common, *on_s3, "--sleep", "0.15"], kill_after=2, timeout=300)
    assert rc1 == 143, first
    saved = _spot_demo.curve(first)[-1][0]
    assert 2 <= saved < STEPS, first
    options = servers.s3_storage_options(s3_server.endpoint_url)
    latest = cloudckpt.latest_checkpoint(f"s3://{s3_bucket}/{prefix}", storage_options=options)
    assert latest is not None and latest.endswith(f"/ckpt-{saved}")

    # 2. restarted, it resumes there and finishes; 3. an uninterrupted run for comparison.
    # Both run in this process (a framework import costs seconds on a small machine): the
    # example's train() builds fresh objects and restores everything from S3, RNG included.
    # JAX's result depends on the device count (the sharding): a process of its own otherwise.
    module = importlib.import_module(script.removesuffix(".py"))
    args = argparse.Namespace(
        steps=STEPS, save_every=3, sleep=0.0, dir=None, bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix=prefix
    )
    if framework == "torch" or len(fw.devices()) == 2:
        second: list[dict] = []
        module.train(args, emit=lambda **e: second.append(e))
        ref_events = module.reference(args)
    else:  # pragma: no cover - jax computed with another device count earlier in this process
        rc2, second = _spot_demo.run_child([*common, *on_s3], timeout=300)
        assert rc2 == 0, second
        rc_ref, ref_events = _spot_demo.run_child([*common, "--dir", str(tmp_path / "reference")], timeout=300)
        assert rc_ref == 0, ref_events
    assert second[0] == {"event": "resumed", "step": saved, "checkpoint": latest}
    assert second[-1]["event"] == "done" and second[-1]["checkpoint"].endswith(f"/ckpt-{STEPS}")
    curve = _spot_demo.curve(first) + _spot_demo.curve(second)
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert curve == _spot_demo.curve(ref_events)  # the same floats, bit for bit (JSON keeps repr)


def test_migrate_from_tf_shows_both_loops_side_by_side() -> None:
    text = (EXAMPLES / "migrate_from_tf.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    tf = [b for b in blocks if "tf.train.CheckpointManager" in b]
    ours = [b for b in blocks if "cloudckpt.CheckpointManager" in b]
    assert tf and ours
    for block in blocks:
        compile(block, "migrate_from_tf.md", "exec")  # every snippet is valid Python


def test_migrate_from_tf_runnable_block_runs(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    text = (EXAMPLES / "migrate_from_tf.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- runnable -->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(EXAMPLES / "migrate_from_tf.md"), "exec"), {"__name__": "__migrate__"})


def test_cross_cloud_restore_moves_a_run_from_s3_to_gcs(s3_server, s3_bucket, gcs_server, gcs_bucket) -> None:
    run = uuid.uuid4().hex[:8]
    src, dst = f"s3://{s3_bucket}/xcloud-{run}", f"gs://{gcs_bucket}/xcloud-{run}"
    argv = [
        sys.executable, str(EXAMPLES / "cross_cloud_restore.py"), "--steps", "10",
        "--src", src, "--src-endpoint-url", s3_server.endpoint_url,
        "--dst", dst, "--dst-endpoint-url", gcs_server.endpoint_url,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == f"{dst}/ckpt-10" and result["resumed_at_step"] == 10
    assert result["latest"] == f"{dst}/ckpt-20"

    # the run that moved ends where a run that never moved ends
    example = importlib.import_module("cross_cloud_restore")
    still = example.new_state()
    example.train(still, cloudckpt.CheckpointManager(still, f"memory://xcloud-ref-{run}", 1), 20)
    final = cloudckpt.load(result["latest"], storage_options=servers.gcs_storage_options(gcs_server.endpoint_url))
    assert final["step"] == 20 and final["w"].tobytes() == still.w.tobytes()
    # and the source is untouched: still its own two newest checkpoints
    source = cloudckpt.latest_checkpoint(src, storage_options=servers.s3_storage_options(s3_server.endpoint_url))
    assert source == f"{src}/ckpt-10"
