"""Train with cloudckpt, hand the model to Hugging Face as safetensors, and bring it back.

    python examples/safetensors_hf_export.py                     # everything on local disk
    python examples/safetensors_hf_export.py --root s3://bucket/run --endpoint-url http://127.0.0.1:9000

1. A tiny GPT-2 (``transformers``, built here: nothing is downloaded) trains a
   few steps; a ``CheckpointManager`` saves its state dict, optimizer and step
   under ``--root`` (any URL).
2. ``export_safetensors`` writes the latest checkpoint's model (the
   ``model`` key) as sharded safetensors with ``model.safetensors.index.json``,
   exactly as ``save_pretrained`` lays them out, into ``--out``;
   ``GPT2LMHeadModel.from_pretrained`` loads that directory, and its logits
   must equal the trained model's.
3. ``import_safetensors`` reads the directory back into a new checkpoint
   under ``--root``; a fresh model restored from it gives the same logits.

Needs torch and transformers (``pip install torch transformers``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import cloudckpt
from cloudckpt.tools.safetensors_io import export_safetensors, import_safetensors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="where the run's checkpoints go (any URL; default: a temporary directory)")
    p.add_argument("--out", help="the local directory of the Hugging Face model (default: a temporary directory)")
    p.add_argument("--endpoint-url", help="an S3-compatible endpoint for --root (e.g. a local moto server)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"this example needs torch and transformers: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask the Hub
    root = args.root or tempfile.mkdtemp(prefix="cloudckpt-hf-")
    out = args.out or tempfile.mkdtemp(prefix="cloudckpt-hf-out-")
    options = None
    if args.endpoint_url:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID", "testing"), os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")
        options = {"endpoint_url": args.endpoint_url, "key": key, "secret": secret}

    # 1. train and checkpoint
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, config.vocab_size, (4, 16))
    ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=0)
    manager = cloudckpt.CheckpointManager(ckpt, f"{root}/run", max_to_keep=2, storage_options=options)
    for step in range(1, args.steps + 1):
        loss = model(data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        ckpt.step = step
        manager.save(checkpoint_number=step)
        print(f"step {step} loss {loss.item():.4f}")
    latest = manager.latest_checkpoint
    assert latest is not None

    # 2. export the model's tensors as Hugging Face safetensors, load them with transformers
    report = export_safetensors(latest, out, prefix="model", max_shard_size="100KB", storage_options=options, overwrite=True)
    for f in [*report.files, report.index]:
        print("wrote", f)
    print(f"exported {report.tensors} tensors, {report.nbytes} bytes, in {len(report.files)} files")
    config.save_pretrained(out)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    model.eval()
    with torch.no_grad():
        want = model(data).logits
        assert torch.equal(hf(data).logits, want), "from_pretrained gave other logits"
    print("from_pretrained: same logits as the trained model")

    # 3. import the directory back into a checkpoint and restore a fresh model from it
    back = import_safetensors(out, f"{root}/imported/ckpt-{args.steps}", prefix="model", ckpt_storage_options=options)
    print("committed", back.url)
    fresh = transformers.GPT2LMHeadModel(config).eval()
    state = cloudckpt.load(back.url, framework="torch", storage_options=options)
    fresh.load_state_dict(state["model"])
    with torch.no_grad():
        assert torch.equal(fresh(data).logits, want), "the imported checkpoint gave other logits"
    print("imported checkpoint: same logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
