"""Deterministic workloads: a flat ``{name: float32 array}`` state.

Every workload is described by a *spec* (names, shapes, dtypes) that costs no
memory, so a load process can pre-allocate targets (torch DCP, torchsnapshot)
without generating the data. ``scale`` multiplies the bytes of every tensor
(by scaling its leading axis) and keeps the tensor count.

* ``small-many``: 500 float32 tensors, sizes log-spaced 256 B .. 4 MiB (~218 MB).
* ``large-few``: 8 x 128 MiB float32 tensors (1 GiB).
* ``llm-like``: GPT-2-shaped parameters (24 layers, d_model 448, vocab 50257,
  context 1024) with Adam state per parameter (exp_avg, exp_avg_sq, a 0-d
  step): 292 parameters, 1,168 tensors, ~0.97 GB.
* ``count-N``: N equal float32 tensors, 256 MiB in total (scaling runs).
* ``huge``: 128 x 128 MiB = 16 GiB (the memory/scale run; needs ~17 GB free RAM).

Example:
    >>> spec = workload_spec("small-many", 1.0)
    >>> len(spec), round(spec_nbytes(spec) / 1e6)
    (500, 218)
    >>> spec = workload_spec("llm-like", 1.0)
    >>> len(spec), round(spec_nbytes(spec) / 1e9, 2)
    (1168, 0.97)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

MiB = 1 << 20

WORKLOADS = ("small-many", "large-few", "llm-like")

Spec = list[tuple[str, tuple[int, ...], str]]


def _scaled(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    if not shape or scale == 1.0:
        return shape
    return (max(1, round(shape[0] * scale)), *shape[1:])


def _gpt2(layers: int = 24, d: int = 448, vocab: int = 50257, ctx: int = 1024) -> list[tuple[str, tuple[int, ...]]]:
    params: list[tuple[str, tuple[int, ...]]] = [("wte.weight", (vocab, d)), ("wpe.weight", (ctx, d))]
    for i in range(layers):
        p = f"h.{i}."
        params += [
            (p + "ln_1.weight", (d,)),
            (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (d, 3 * d)),
            (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)),
            (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)),
            (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (d, 4 * d)),
            (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (4 * d, d)),
            (p + "mlp.c_proj.bias", (d,)),
        ]
    params += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return params


def workload_spec(name: str, scale: float = 1.0) -> Spec:
    """Names, shapes and dtypes of a workload (no data)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if name == "small-many":
        sizes = np.geomspace(256, 4 * MiB, 500)
        return [(f"t{i:03d}", (max(1, round(s * scale / 4)),), "float32") for i, s in enumerate(sizes)]
    if name == "large-few":
        return [(f"layer{i}.weight", _scaled((8192, 4096), scale), "float32") for i in range(8)]
    if name == "llm-like":
        out: Spec = []
        for pname, shape in _gpt2():
            s = _scaled(shape, scale)
            out.append((f"model.{pname}", s, "float32"))
            out.append((f"optim.exp_avg.{pname}", s, "float32"))
            out.append((f"optim.exp_avg_sq.{pname}", s, "float32"))
            out.append((f"optim.step.{pname}", (), "float32"))
        return out
    if name == "huge":
        return [(f"shard{i:03d}", _scaled((8192, 4096), scale), "float32") for i in range(128)]
    if name.startswith("count-"):
        n = int(name.split("-", 1)[1])
        if n < 1:
            raise ValueError(f"bad workload {name!r}")
        elems = max(1, math.floor(256 * MiB * scale / 4 / n))
        return [(f"t{i:05d}", (elems,), "float32") for i in range(n)]
    raise ValueError(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}, count-N, huge")


def spec_nbytes(spec: Spec) -> int:
    return sum(math.prod(shape) * np.dtype(dt).itemsize for _, shape, dt in spec)


def make_state(spec: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Generate the state deterministically (standard normal: incompressible like weights)."""
    state: dict[str, np.ndarray] = {}
    for i, (name, shape, dt) in enumerate(spec):
        rng = np.random.default_rng([seed, i, zlib.crc32(name.encode())])
        n = math.prod(shape)
        arr = rng.standard_normal(n, dtype=np.dtype(dt)) if n else np.empty(0, dt)
        state[name] = arr.reshape(shape)
    return state


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def digest(items: Iterable[tuple[str, Any]]) -> str:
    """crc32c over names, shapes and bytes in name order: equal iff the states are bit-equal."""
    import crc32c

    value = 0
    for name, x in sorted(items, key=lambda kv: kv[0]):
        a = np.ascontiguousarray(_as_numpy(x))
        value = crc32c.crc32c(f"{name}:{a.dtype.str}:{a.shape};".encode(), value)
        value = crc32c.crc32c(memoryview(a.reshape(-1).view(np.uint8)), value)
    return f"{value:08x}"
