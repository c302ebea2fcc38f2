"""Hugging Face transformers: CheckpointManagerCallback under a real Trainer (CPU, no download).

A tiny GPT-2 built from a config in the test trains a few steps with the
callback saving through a CheckpointManager (local disk, memory://, S3 and
GCS emulators); the run "crashes" (an exception from a callback) after a
save; a new Trainer on a freshly built model resumes from the manager's
latest checkpoint and continues bit-exactly: the same loss at every step
and the same final weights as an uninterrupted run, dropout included (RNG
states restored), resumed inside an epoch and at an epoch boundary.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from a config
REASON = "torch and transformers are needed (pip install 'cloudckpt[huggingface]')"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import cloudckpt  # noqa: E402
from cloudckpt.integrations.huggingface import CheckpointManagerCallback  # noqa: E402

MAX_STEPS = 10  # 16 examples, batch 4: 4 steps an epoch


class Crash(Exception):
    pass


class CrashAt(TrainerCallback):
    """Raise at the end of step ``step``, as a machine that dies there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"killed at step {state.global_step}")


def _dataset() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 64, (16, 12), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _trainer(tmp_path, callbacks: list, save_steps: int) -> Trainer:
    transformers.set_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)  # dropout 0.1: RNG matters
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=MAX_STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
        lr_scheduler_type="linear", warmup_steps=2, save_strategy="steps", save_steps=save_steps, logging_steps=1,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    return Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=_dataset(), callbacks=callbacks)


def _losses(trainer: Trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def _run_crash_resume(tmp_path, url: str, storage_options, save_steps: int, crash_at: int) -> tuple[Trainer, dict, str]:
    first = _trainer(tmp_path, [CheckpointManagerCallback(url, max_to_keep=2, storage_options=storage_options),
                                CrashAt(crash_at)], save_steps)  # fmt: skip
    with pytest.raises(Crash):
        first.train()
    losses = _losses(first)
    callback = CheckpointManagerCallback(url, max_to_keep=2, storage_options=storage_options)
    second = _trainer(tmp_path, [callback], save_steps)  # a new process: new model, optimizer, scheduler
    resume = callback.resume_from_checkpoint(second)
    assert resume is not None
    second.train(resume_from_checkpoint=resume)
    assert not os.path.exists(resume)  # the local resume directory is gone once training ends
    return second, losses, callback.directory


@pytest.mark.parametrize(("save_steps", "crash_at"), [(3, 8), (4, 6)], ids=["mid_epoch", "epoch_boundary"])
def test_resume_from_the_manager_continues_bit_exactly(backend, tmp_path, capsys, save_steps, crash_at) -> None:
    url = backend.url("hf-run")
    reference = _trainer(tmp_path / "ref", [CheckpointManagerCallback(f"memory://hf-ref-{os.urandom(4).hex()}")],
                         save_steps)  # fmt: skip
    reference.train()
    resumed, before_crash, _ = _run_crash_resume(tmp_path, url, backend.storage_options, save_steps, crash_at)

    latest_before = (crash_at // save_steps) * save_steps  # the checkpoint the crash left as latest
    assert before_crash == {s: v for s, v in _losses(reference).items() if s < crash_at}
    assert resumed.state.log_history[0]["step"] == 1  # the history up to the checkpoint came back with it
    assert _losses(resumed) == _losses(reference)  # every loss, bit for bit, the resumed steps included
    assert len([line for line in capsys.readouterr().out.splitlines() if "'loss'" in line]) == (
        MAX_STEPS + (crash_at - 1) + (MAX_STEPS - latest_before))  # logged: reference, crashed run, resumed steps
    assert resumed.state.global_step == MAX_STEPS
    for (name, a), (_, b) in zip(resumed.model.state_dict().items(), reference.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # the manager's directory: its retention kept the newest two, numbered by global step
    steps = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), url, max_to_keep=2,
                                        storage_options=backend.storage_options).all_steps()  # fmt: skip
    expected = sorted({*range(save_steps, MAX_STEPS + 1, save_steps), MAX_STEPS})[-2:]
    assert steps == expected
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))  # no local copy


def test_a_fresh_directory_starts_from_scratch_and_async_saves_commit(tmp_path) -> None:
    callback = CheckpointManagerCallback(f"memory://hf-fresh-{os.urandom(4).hex()}", async_save=True)
    trainer = _trainer(tmp_path, [callback], 5)
    assert callback.resume_from_checkpoint(trainer) is None
    trainer.train(resume_from_checkpoint=None)
    assert callback.manager is not None and callback.manager.all_steps() == [5, 10]


def test_save_strategy_best_is_refused(tmp_path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), save_strategy="best", eval_strategy="steps", report_to="none",
                             metric_for_best_model="loss", use_cpu=True)  # fmt: skip
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    with pytest.raises(ValueError, match="save_strategy='best'"):
        Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=_dataset(), eval_dataset=_dataset(),
                callbacks=[CheckpointManagerCallback("memory://hf-best")])  # fmt: skip


def test_example_killed_by_sigkill_resumes_on_s3_and_ends_like_an_uninterrupted_run(s3_server, s3_bucket, tmp_path) -> None:
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    example = root / "examples" / "huggingface_training.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    on_s3 = ["--bucket", s3_bucket, "--endpoint-url", s3_server.endpoint_url, "--prefix", f"hf-{os.urandom(4).hex()}"]

    def run(*args: str) -> tuple[int, list[dict]]:
        out = subprocess.run([sys.executable, str(example), *args], capture_output=True, text=True, env=env, timeout=300)
        return out.returncode, [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"')]

    rc, killed = run(*on_s3, "--kill-at", "6")
    assert rc == -signal.SIGKILL, killed
    assert [e["step"] for e in killed if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    rc, resumed = run(*on_s3)
    assert rc == 0, resumed
    assert resumed[0]["event"] == "resumed" and resumed[0]["step"] == 4  # the latest save before the kill
    rc, reference = run("--dir", str(tmp_path / "reference"))
    assert rc == 0 and "resumed" not in {e["event"] for e in reference}
    assert resumed[-1] == {**reference[-1]}  # done: same step, same weights (sha256)
    losses = {e["step"]: e["loss"] for e in [*killed, *resumed] if e["event"] == "step"}
    assert losses == {e["step"]: e["loss"] for e in reference if e["event"] == "step"}


def test_benchmark_script_measures_both_paths(tmp_path) -> None:
    """benchmarks/integrations.py (docs/benchmarks.md) for the Trainer, tiny: every row measured."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.integrations", "--framework", "huggingface", "--mb", "8",
                          "--reps", "1", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")],
                         cwd=root, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["impl"], r["phase"], r["cache"]) for r in records}
    for impl in ("own", "cloudckpt"):
        assert {(impl, "save", "-"), (impl, "load", "warm")} <= rows
        assert (impl, "load", "cold") in rows or (impl, "load", "not-cold") in rows
    assert all(r["seconds"] > 0 and r["bytes"] > 1e6 for r in records)
