"""PyTorch Lightning: CloudCheckpointIO under a real Trainer (CPU), on local disk, memory, S3 and GCS emulators.

* a value without a pickle-free form (an object in ``hyper_parameters``)
  raises ``TypeError`` naming its key and ``save_hyperparameters(ignore=...)``,
  and nothing is written;
* ``ModelCheckpoint(save_top_k=2, monitor=...)`` + the plugin on an object
  store keeps exactly the checkpoints Lightning keeps on local disk with its
  own ``TorchCheckpointIO`` (whose deletion rules are guarded there: never
  the checkpoint a run resumed from, never outside ``dirpath``), resuming
  in the same directory and in a new one (Lightning-AI/pytorch-lightning#21813);
* a training process killed with SIGKILL resumes with ``ckpt_path="last"``
  on S3 from the checkpoint it had committed, and ends bit-exactly where an
  uninterrupted run ends (examples/lightning_training.py, in subprocesses).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REASON = "torch and lightning are needed (pip install 'cloudckpt[lightning]')"
torch = pytest.importorskip("torch", reason=REASON)
L = pytest.importorskip("lightning", reason=REASON)

import fsspec  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import cloudckpt  # noqa: E402
from cloudckpt.integrations.lightning import CloudCheckpointIO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lightning_training.py"
VAL_LOSS = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 0.5, 7.0]  # per epoch: decides the top k


class Scripted(L.LightningModule):
    """A tiny model whose validation loss per epoch is VAL_LOSS: the top k is known in advance."""

    def __init__(self, extra: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(VAL_LOSS[self.current_epoch]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> Any:
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def _fit(dirpath: str, epochs: int, plugin: Any, ckpt_path: str | None = None, **checkpoint_kw: Any) -> ModelCheckpoint:
    L.seed_everything(0, verbose=False)
    callback = ModelCheckpoint(dirpath=dirpath, **checkpoint_kw)
    trainer = L.Trainer(max_epochs=epochs, plugins=[plugin] if plugin else None, callbacks=[callback], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Scripted(), _loader(), _loader(), ckpt_path=ckpt_path)
    return callback


def _names(fs: Any, root: str) -> set[str]:
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)} if fs.exists(root) else set()


@pytest.fixture
def lightning_fs(object_backend, monkeypatch):
    """Lightning lists dirpath with its own fsspec filesystem: give it the emulator's options."""
    protocol = {"s3": "s3", "gcs": "gs", "azure": "az"}[object_backend.name]
    monkeypatch.setitem(fsspec.config.conf, protocol, dict(object_backend.storage_options))
    return object_backend


class Opaque:
    """An arbitrary (picklable) object a user passes to a LightningModule."""


def test_an_object_in_hyper_parameters_is_refused_naming_its_key(tmp_path) -> None:
    callback = ModelCheckpoint(dirpath=str(tmp_path / "run"))
    trainer = L.Trainer(max_epochs=1, plugins=[CloudCheckpointIO()], callbacks=[callback], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(TypeError) as info:
        trainer.fit(Scripted(extra=Opaque()), _loader())
    message = str(info.value)
    assert "'hyper_parameters/extra'" in message and "Opaque" in message
    assert "save_hyperparameters(ignore=['extra'])" in message
    assert not list(tmp_path.rglob("manifest.json"))  # nothing was committed


@pytest.mark.parametrize("save_last", [True, False], ids=["save_last", "no_last"])
def test_top_k_on_an_object_store_keeps_what_lightning_keeps_locally(lightning_fs, tmp_path, save_last) -> None:
    backend = lightning_fs
    kw = dict(monitor="val_loss", save_top_k=2, save_last=save_last)
    remote, local = backend.url("run"), str(tmp_path / "local")
    kept: dict[str, set[str]] = {}
    for where, plugin in ((remote, CloudCheckpointIO(backend.storage_options)), (local, None)):
        _fit(where, 3, plugin, **kw)  # epochs 0..2: val 5, 3, 4 -> keeps epoch 1 and 2
        resumed = f"{where}/epoch=2-step=6.ckpt"
        # a new process resumes from epoch 2; epochs 3..5 (val 1, 2, 6) push it out of the top 2
        again = _fit(where, 6, CloudCheckpointIO(backend.storage_options) if plugin else None, ckpt_path=resumed, **kw)
        assert again.best_model_path == f"{where}/epoch=3-step=8.ckpt"
        fs = backend.filesystem() if where == remote else fsspec.filesystem("file")
        kept[where] = {n for n in _names(fs, where) if n.endswith(".ckpt")}
    expected = {"epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt", "epoch=2-step=6.ckpt"} | ({"last.ckpt"} if save_last else set())
    assert kept[local] == expected  # Lightning's own rules on local disk: top 2, and the one it resumed from
    assert kept[remote] == kept[local]
    for name in kept[remote]:  # each kept checkpoint is whole
        state = CloudCheckpointIO(backend.storage_options).load_checkpoint(f"{remote}/{name}")
        assert "state_dict" in state and "optimizer_states" in state
    if save_last:
        last = CloudCheckpointIO(backend.storage_options).load_checkpoint(f"{remote}/last.ckpt")
        lightning_last = torch.load(f"{local}/last.ckpt", weights_only=True)  # Lightning's own last.ckpt
        assert (last["epoch"], last["global_step"]) == (lightning_last["epoch"], lightning_last["global_step"])
        assert torch.equal(last["state_dict"]["net.weight"], lightning_last["state_dict"]["net.weight"])
        versions = _names(backend.filesystem(), backend.url("run", "last.ckpt.versions"))
        assert len(versions) == 1  # the older "last" versions were deleted once the new one committed
    report = cloudckpt.verify(f"{remote}/epoch=3-step=8.ckpt", storage_options=backend.storage_options)
    assert report.ok


def test_resuming_into_a_new_directory_keeps_the_previous_run(lightning_fs) -> None:
    """Lightning-AI/pytorch-lightning#21813: save_top_k=1, monitor=None, resumed into a new dirpath on S3."""
    backend = lightning_fs
    run1, run2 = backend.url("run1"), backend.url("run2")
    first = _fit(run1, 2, CloudCheckpointIO(backend.storage_options), save_top_k=1)
    assert first.best_model_path == f"{run1}/epoch=1-step=4.ckpt"
    _fit(run2, 4, CloudCheckpointIO(backend.storage_options), ckpt_path=first.best_model_path, save_top_k=1)
    fs = backend.filesystem()
    assert _names(fs, run1) == {"epoch=1-step=4.ckpt"}  # Lightning alone deletes it (best_model_path is reloaded)
    assert _names(fs, run2) == {"epoch=3-step=8.ckpt"}
    state = CloudCheckpointIO(backend.storage_options).load_checkpoint(first.best_model_path)
    assert state["global_step"] == 4


def test_remove_checkpoint_uncommits_first_and_guards(tmp_path) -> None:
    io = CloudCheckpointIO()
    run = str(tmp_path / "run")
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, f"{run}/a.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, f"{run}/b.ckpt")
    other = CloudCheckpointIO()
    other.remove_checkpoint(f"{run}/a.ckpt")  # never saved into run: a previous run's, kept
    assert (tmp_path / "run" / "a.ckpt" / "manifest.json").exists()
    io.load_checkpoint(f"{run}/b.ckpt")  # resumed from: kept
    io.remove_checkpoint(f"{run}/b.ckpt")
    assert (tmp_path / "run" / "b.ckpt" / "manifest.json").exists()
    io.remove_checkpoint(f"{run}/a.ckpt")
    assert not (tmp_path / "run" / "a.ckpt").exists()
    with pytest.raises(cloudckpt.CheckpointExistsError):  # committed checkpoints are never overwritten
        io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, f"{run}/b.ckpt")
    cloudckpt.save(f"{run}/last.ckpt", {"epoch": 7})  # a "last" saved without the pointer (save_last="link")
    assert CloudCheckpointIO().load_checkpoint(f"{run}/last.ckpt")["epoch"] == 7
    io.remove_checkpoint(f"{run}/last.ckpt")
    assert not (tmp_path / "run" / "last.ckpt").exists()


def _read_events(proc: subprocess.Popen, until: Any, timeout: float) -> list[dict]:
    """Read the child's JSON lines until ``until(event)`` is true (or it exits)."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            events.append(json.loads(line))
            if until(events[-1]):
                return events
    return events


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> list[dict]:
    out = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_sigkill_mid_run_resumes_from_last_bit_exactly_on_s3(s3_server, s3_bucket, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    prefix = f"lightning-kill-{os.getpid()}-{time.time_ns()}"
    on_s3 = ["--bucket", s3_bucket, "--endpoint-url", s3_server.endpoint_url, "--prefix", prefix]
    epochs = ["--epochs", "6"]
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), *on_s3, *epochs, "--sleep", "0.03"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        events = _read_events(proc, lambda e: e.get("event") == "start" and e["epoch"] >= 3, timeout=240)
        time.sleep(0.15)  # into epoch 3 (8 batches of 0.03 s), or into its save
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = [e["epoch"] - 1 for e in events if e.get("event") == "start"]  # epoch k starts: k-1 saved
    assert committed and committed[-1] >= 2, events

    options = {"key": "testing", "secret": "testing", "endpoint_url": s3_server.endpoint_url, "anon": False}
    last_url = f"s3://{s3_bucket}/{prefix}/last.ckpt"
    at_kill = CloudCheckpointIO(options).load_checkpoint(last_url)  # what the killed run had committed
    assert at_kill["epoch"] >= committed[-1]

    resumed = _run([*on_s3, *epochs], env)
    assert resumed[0] == {"event": "resumed", "epoch": at_kill["epoch"], "step": at_kill["global_step"]}
    assert resumed[-1]["event"] == "done" and resumed[-1]["epoch"] == 6
    reference = _run(["--dir", str(tmp_path / "reference"), *epochs], env)
    assert "resumed" not in {e["event"] for e in reference}
    assert resumed[-1]["digest"] == reference[-1]["digest"]  # weights and optimizer state, every bit
    losses = {e["epoch"]: e["loss"] for e in [*events, *resumed] if e["event"] == "epoch"}
    assert losses == {e["epoch"]: e["loss"] for e in reference if e["event"] == "epoch"}


def test_benchmark_script_measures_both_paths(tmp_path) -> None:
    """benchmarks/integrations.py (docs/benchmarks.md), tiny: every row measured, cold loads really cold."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.integrations", "--framework", "lightning", "--mb", "1",
                          "--reps", "1", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["impl"], r["phase"], r["cache"]) for r in records}
    for impl in ("own", "cloudckpt"):
        assert {(impl, "save", "-"), (impl, "load", "warm")} <= rows
        assert (impl, "load", "cold") in rows or (impl, "load", "not-cold") in rows
    assert all(r["seconds"] > 0 and r["bytes"] > 1e6 for r in records)
    assert "| cloudckpt | save (blocking) |" in out.stdout
