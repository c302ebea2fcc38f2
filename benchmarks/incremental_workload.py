"""The ``finetune`` workload of ``benchmarks/incremental.py``: a LoRA fine-tuning state, one training step's change.

A frozen base model shaped like a small Llama (d_model 1280, 9 layers, MLP
3456, vocabulary 32,000, untied head; q/k/v biases), a rank-8 adapter pair
(``lora_A`` ``[8, in]``, ``lora_B`` ``[out, 8]``) on every attention and MLP
matrix, Adam ``exp_avg``/``exp_avg_sq``/``step`` for the adapters only, and a
step counter; names and order as a PEFT model's ``state_dict()`` (each adapter
right after the matrix it adapts). ~1.06 GB at scale 1, ~2.0 % of it changing
between saves (adapters, their moments, the counters). ``scale`` multiplies
the leading axis of every tensor but ``lora_A``. ``llm-like``
(benchmarks/workloads.py) is offered too, every tensor changing between saves.

Example:
    >>> tree, facts = make_workload("finetune", 0.01)
    >>> before = state_digest(tree)
    >>> mutate("finetune", tree, 1)
    >>> state_digest(tree) != before, facts["tensors"], facts["changed_tensors"]
    (True, 616, 505)
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

# the finetune model at scale 1
D_MODEL, FFN, LAYERS, VOCAB, RANK = 1280, 3456, 9, 32000, 8

Spec = list[tuple[str, tuple[int, ...], str, str]]  # name, shape, dtype, kind


def _lead(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    if not shape or scale == 1.0:
        return shape
    return (max(1, round(shape[0] * scale)), *shape[1:])


def finetune_spec(scale: float = 1.0) -> Spec:
    """The tensors of the finetune state: (name, shape, dtype, kind), kind one of
    ``frozen``, ``adapter``, ``exp_avg``, ``exp_avg_sq``, ``adam_step``, ``step``.

    Example:
        >>> spec = finetune_spec(1.0)
        >>> total = sum(math.prod(s) * 4 for _, s, _, _ in spec if s)
        >>> changed = sum(math.prod(s) * 4 for _, s, _, k in spec if k != "frozen")
        >>> round(total / 1e9, 2), round(100 * changed / total, 1)
        (1.06, 2.0)
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    d, f = D_MODEL, FFN
    model: Spec = [("model.embed_tokens.weight", _lead((VOCAB, d), scale), "float32", "frozen")]
    adapters: list[tuple[str, tuple[int, ...]]] = []
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        model.append((p + "input_layernorm.weight", _lead((d,), scale), "float32", "frozen"))
        mats = [("self_attn.q_proj", (d, d), True), ("self_attn.k_proj", (d, d), True),
                ("self_attn.v_proj", (d, d), True), ("self_attn.o_proj", (d, d), False),
                ("post_attention_layernorm", None, False),
                ("mlp.gate_proj", (f, d), False), ("mlp.up_proj", (f, d), False), ("mlp.down_proj", (d, f), False)]
        for name, shape, bias in mats:
            if shape is None:
                model.append((p + name + ".weight", _lead((d,), scale), "float32", "frozen"))
                continue
            w = _lead(shape, scale)
            model.append((p + name + ".base_layer.weight", w, "float32", "frozen"))
            if bias:
                model.append((p + name + ".base_layer.bias", (w[0],), "float32", "frozen"))
            a, b = (RANK, w[1]), (w[0], RANK)
            model.append((p + name + ".lora_A.default.weight", a, "float32", "adapter"))
            model.append((p + name + ".lora_B.default.weight", b, "float32", "adapter"))
            adapters += [(p + name + ".lora_A.default.weight", a), (p + name + ".lora_B.default.weight", b)]
    model.append(("model.norm.weight", _lead((d,), scale), "float32", "frozen"))
    model.append(("lm_head.weight", _lead((VOCAB, d), scale), "float32", "frozen"))
    optim: Spec = []
    for name, shape in adapters:
        optim.append((f"optimizer.state.{name}.exp_avg", shape, "float32", "exp_avg"))
        optim.append((f"optimizer.state.{name}.exp_avg_sq", shape, "float32", "exp_avg_sq"))
        optim.append((f"optimizer.state.{name}.step", (), "float32", "adam_step"))
    return [*model, *optim, ("step", (), "int64", "step")]


def _rand(name: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n = math.prod(shape)
    if np.dtype(dtype).kind == "i":
        return np.zeros(shape, dtype)
    return rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False).reshape(shape)


def make_workload(name: str, scale: float, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Checkpoint's keyword arguments, facts: bytes, changed bytes per save, tensors)."""
    if name == "finetune":
        spec = finetune_spec(scale)
        model: dict[str, np.ndarray] = {}
        state: dict[str, dict[str, np.ndarray]] = {}
        step = np.zeros((), np.int64)
        for tname, shape, dt, kind in spec:
            if kind in ("frozen", "adapter"):
                model[tname] = _rand(tname, shape, dt, seed)
            elif kind in ("exp_avg", "exp_avg_sq", "adam_step"):
                pname, field = tname[len("optimizer.state."):].rsplit(".", 1)
                arr = np.zeros((), np.float32) if kind == "adam_step" else np.abs(_rand(tname, shape, dt, seed)) * 1e-3
                state.setdefault(pname, {})[field] = arr
        groups = [{"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "params": list(state)}]
        tree = {"model": model, "optimizer": {"state": state, "param_groups": groups}, "step": step}
        nbytes = sum(a.nbytes for a in arrays_of(tree))
        changed = sum(math.prod(s) * np.dtype(dt).itemsize for _, s, dt, k in spec if k != "frozen")
        return tree, {"bytes": nbytes, "changed_bytes": changed, "tensors": len(spec),
                      "changed_tensors": sum(1 for *_, k in spec if k != "frozen")}
    if name == "llm-like":
        from benchmarks.workloads import make_state, workload_spec

        flat = make_state(workload_spec("llm-like", scale), seed)
        nbytes = sum(a.nbytes for a in flat.values())
        return {"state": flat}, {"bytes": nbytes, "changed_bytes": nbytes, "tensors": len(flat), "changed_tensors": len(flat)}
    raise ValueError(f"unknown workload {name!r}: finetune or llm-like")


def arrays_of(tree: Any) -> list[np.ndarray]:
    return [a for _, a in _leaves(tree)]


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """(path, array) of every numpy array / scalar in a tree of dicts and lists, in tree order."""
    out: list[tuple[str, np.ndarray]] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out += _leaves(v, f"{prefix}/{i}")
    elif isinstance(tree, (np.ndarray, np.generic)):
        out.append((prefix, np.asarray(tree)))
    return out


def state_digest(tree: Any) -> str:
    """crc32c of every array's name, dtype, shape and bytes (``save_counter`` left out): equal iff bit-equal."""
    from benchmarks.workloads import digest

    if isinstance(tree, dict):
        tree = {k: v for k, v in tree.items() if k != "save_counter"}
    return digest(_leaves(tree))


def mutate(name: str, tree: dict[str, Any], t: int) -> None:
    """One training step's change, in place: the adapters, their moments and the counters (finetune),
    every tensor (llm-like)."""
    if name == "llm-like":
        for a in tree["state"].values():
            np.add(a, 1, out=a, casting="unsafe")
        return
    rng = np.random.default_rng([99, t])
    model, state = tree["model"], tree["optimizer"]["state"]
    for pname, s in state.items():
        p = model[pname]
        g = rng.standard_normal(p.size, dtype=np.float32).reshape(p.shape) * np.float32(1e-3)
        s["exp_avg"] *= np.float32(0.9)
        s["exp_avg"] += np.float32(0.1) * g
        s["exp_avg_sq"] *= np.float32(0.999)
        s["exp_avg_sq"] += np.float32(0.001) * g * g
        s["step"] += np.float32(1)
        p -= np.float32(1e-4) * s["exp_avg"] / (np.sqrt(s["exp_avg_sq"]) + np.float32(1e-8))
    tree["step"] += 1
