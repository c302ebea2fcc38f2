"""The framework integrations against each framework's own checkpoint path, on the same workload.

    python -m benchmarks.integrations --framework lightning --target local --mb 256 --reps 3
    python -m benchmarks.integrations --framework lightning --target s3 --mb 256 --reps 3
    python -m benchmarks.integrations --framework huggingface --target local --mb 256 --reps 3

Lightning: a ``LightningModule`` (an MLP whose weights and Adam state make
``--mb``) trained one step; *own* is ``trainer.save_checkpoint`` with
Lightning's default ``TorchCheckpointIO`` (``torch.save`` through fsspec)
and its ``load_checkpoint``; *cloudckpt* is the same calls with
``Trainer(plugins=[CloudCheckpointIO()])``. Hugging Face: a GPT-2 built from
a config (no download), trained one step; *own* is the ``Trainer``'s own
checkpoint (``Trainer._save_checkpoint``: ``model.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``;
local disk only, as the ``Trainer`` writes) read back with safetensors and
``torch.load(weights_only=True)``; *cloudckpt* is ``CheckpointManagerCallback``'s
manager save and ``cloudckpt.load(framework="torch")`` of the same state.

Every save and every load runs in a fresh process. A save is timed around
the one blocking call (``trainer.save_checkpoint`` / the manager's ``save``):
that is also the time training is blocked. Loads on local disk run twice,
``cold`` (the checkpoint's files evicted from the page cache and checked
with ``benchmarks.pagecache``) and ``warm`` (read once before); on S3 (moto,
started here) every load is a fresh client. MB/s = bytes of the tensors in
the state (MB = 10^6 bytes) / seconds; the median of ``--reps`` runs is printed
as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from benchmarks import pagecache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- children: one save or one load, in a process of its own --------------------------------


def _tensor_bytes(tree: Any) -> int:
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return 0


def _s3_config(opts: dict[str, Any] | None) -> None:
    if opts:
        import fsspec

        fsspec.config.conf.setdefault("s3", {}).update(opts)  # Lightning's own fsspec calls


def _lightning_save(spec: dict[str, Any]) -> dict[str, Any]:
    import lightning as L
    import torch

    from cloudckpt.integrations.lightning import CloudCheckpointIO

    _s3_config(spec["opts"])
    width = int((spec["mb"] * 1e6 / 4 / 3 / 2) ** 0.5)  # two width x width layers; weights + Adam's two moments

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, width)), batch_size=4)
    plugins = [CloudCheckpointIO(spec["opts"])] if spec["impl"] == "cloudckpt" else None
    trainer = L.Trainer(max_steps=1, plugins=plugins, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(MLP(), data)
    nbytes = _tensor_bytes(trainer._checkpoint_connector.dump_checkpoint())
    t0 = time.perf_counter()
    trainer.save_checkpoint(spec["path"])
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes}


def _lightning_load(spec: dict[str, Any]) -> dict[str, Any]:
    _s3_config(spec["opts"])
    if spec["impl"] == "cloudckpt":
        from cloudckpt.integrations.lightning import CloudCheckpointIO

        io: Any = CloudCheckpointIO(spec["opts"])
    else:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        io = TorchCheckpointIO()
    t0 = time.perf_counter()
    state = io.load_checkpoint(spec["path"])
    return {"seconds": time.perf_counter() - t0, "bytes": _tensor_bytes(state)}


def _hf_trainer(spec: dict[str, Any], callbacks: list[Any]) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    n_embd, vocab = 512, 8192
    per_layer = 12 * n_embd * n_embd
    layers = max(1, round((spec["mb"] * 1e6 / 4 / 3 - vocab * n_embd) / per_layer))  # weights + Adam's moments
    config = GPT2Config(n_layer=layers, n_embd=n_embd, n_head=8, vocab_size=vocab, n_positions=32)
    ids = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(output_dir=spec["path"], max_steps=1, per_device_train_batch_size=4, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=GPT2LMHeadModel(config), args=args, callbacks=callbacks,
                      train_dataset=[{"input_ids": r, "labels": r} for r in ids])  # fmt: skip
    trainer.train()
    return trainer


def _hf_save(spec: dict[str, Any]) -> dict[str, Any]:
    from cloudckpt.integrations.huggingface import CheckpointManagerCallback

    callback = CheckpointManagerCallback(spec["path"] + "/managed", max_to_keep=1, storage_options=spec["opts"])
    trainer = _hf_trainer(spec, [callback] if spec["impl"] == "cloudckpt" else [])
    nbytes = _tensor_bytes(trainer.model.state_dict()) + _tensor_bytes(trainer.optimizer.state_dict())
    t0 = time.perf_counter()
    if spec["impl"] == "cloudckpt":
        assert callback.manager is not None
        callback.manager.save(checkpoint_number=1)
    else:
        trainer._save_checkpoint(trainer.model, trial=None)  # what save_strategy="steps" runs
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes}


def _hf_load(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    import cloudckpt
    import cloudckpt.integrations.huggingface  # (imported in a training process, as transformers is)

    t0 = time.perf_counter()
    if spec["impl"] == "cloudckpt":
        state: Any = cloudckpt.load(spec["path"] + "/managed/ckpt-1", storage_options=spec["opts"], framework="torch")
    else:
        d = spec["path"] + "/checkpoint-1"
        state = {"model": load_file(d + "/model.safetensors"),
                 "optimizer": torch.load(d + "/optimizer.pt", weights_only=True),
                 "scheduler": torch.load(d + "/scheduler.pt", weights_only=True),
                 "rng": torch.load(d + "/rng_state.pth", weights_only=False)}  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "bytes": _tensor_bytes(state)}


CHILDREN = {("lightning", "save"): _lightning_save, ("lightning", "load"): _lightning_load,
            ("huggingface", "save"): _hf_save, ("huggingface", "load"): _hf_load}  # fmt: skip


# -- the parent: fresh processes, page cache, table --------------------------------------------


def _child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.integrations", "--child", json.dumps(spec)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{spec['framework']} {spec['phase']} {spec['impl']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _local_path(spec: dict[str, Any]) -> str:
    if spec["framework"] == "huggingface":
        return spec["path"] + ("/managed/ckpt-1" if spec["impl"] == "cloudckpt" else "/checkpoint-1")
    return spec["path"]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    server, opts, bucket = None, None, "cloudckpt-bench-integrations"
    if args.target == "s3":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import servers  # tests/servers.py: moto

        server = servers.start_moto_server()
        servers.make_s3_bucket(server.endpoint_url, bucket)
        opts = servers.s3_storage_options(server.endpoint_url)
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    workdir = tempfile.mkdtemp(prefix="bench-integrations-", dir=args.workdir)
    records: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for impl in ("own", "cloudckpt"):
                name = f"{args.framework}-{impl}-{rep}-{uuid.uuid4().hex[:6]}"
                path = f"s3://{bucket}/{name}" if server else os.path.join(workdir, name)
                if args.framework == "lightning":
                    path += ".ckpt"
                spec = {"framework": args.framework, "impl": impl, "path": path, "opts": opts, "mb": args.mb}
                saved = _child({**spec, "phase": "save"}, env)
                records.append({"impl": impl, "phase": "save", "cache": "-", **saved})
                caches = ["fresh-client"] if server else (["cold", "warm"] if rep % 2 == 0 else ["warm", "cold"])
                for cache in caches:
                    check = None
                    if cache != "fresh-client":
                        check = (pagecache.evict if cache == "cold" else pagecache.warm)(_local_path(spec))
                    loaded = _child({**spec, "phase": "load"}, env)
                    ok = check is None or check["ok"]
                    records.append({"impl": impl, "phase": "load", "cache": cache if ok else f"not-{cache}",
                                    **loaded, "bytes": saved["bytes"]})  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    return records


def table(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    command = f"python -m benchmarks.integrations --framework {args.framework} --target {args.target} " \
              f"--mb {args.mb:g} --reps {args.reps}"  # fmt: skip
    lines = [f"`{command}`\n", "| path | measure | seconds (median) | MB/s |", "|---|---|---|---|"]
    for impl in ("own", "cloudckpt"):
        for phase, cache in [("save", "-"), ("load", "cold"), ("load", "warm"), ("load", "fresh-client")]:
            rows = [r for r in records if (r["impl"], r["phase"], r["cache"]) == (impl, phase, cache)]
            if not rows:
                continue
            seconds = statistics.median(r["seconds"] for r in rows)
            mb = statistics.median(r["bytes"] for r in rows) / 1e6
            what = "save (blocking)" if phase == "save" else f"load, {cache}"
            lines.append(f"| {impl} | {what} | {seconds:.3f} | {mb / seconds:,.0f} |")
    skipped = [r for r in records if r["cache"].startswith("not-")]
    if skipped:
        lines.append(f"\n{len(skipped)} load(s) could not be made cold/warm and are left out.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=["lightning", "huggingface"], default="lightning")
    p.add_argument("--target", choices=["local", "s3"], default="local")
    p.add_argument("--mb", type=float, default=256, help="bytes of weights + optimizer state, in MB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", help="where local checkpoints go (default: a temp dir)")
    p.add_argument("--json", help="also write the records here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["framework"], spec["phase"]](spec)))
        return 0
    if args.framework == "huggingface" and args.target != "local":
        raise SystemExit("the Trainer writes its own checkpoints to a local directory only: --target local")
    records = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    print(table(records, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
