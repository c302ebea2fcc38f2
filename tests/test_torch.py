"""PyTorch tensors, modules and optimizers through cloudckpt (skipped without torch).

- every torch dtype that numpy or ml_dtypes knows round-trips bit-exactly,
  the others are refused naming the leaf;
- non-contiguous, conjugated and negated views are stored by value;
- tied weights are stored once and load tied; a Checkpoint restore keeps a
  module's tied parameters tied;
- tensors in Checkpoint trees and ``load(target=)`` are restored in place;
- a model + optimizer (+ scheduler, GradScaler) restored into fresh objects
  continue training bit-identically to an uninterrupted run;
- a CheckpointManager run with a torch model on every backend;
- registration is lazy: the core never imports torch by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")

import cloudckpt  # noqa: E402
from cloudckpt.format.manifest import encode_manifest  # noqa: E402
from cloudckpt.frameworks import torch as ttorch  # noqa: E402
from cloudckpt.storage import open_storage  # noqa: E402

EXOTIC = [
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
]
PLAIN = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]
ALL_DTYPES = [getattr(torch, n) for n in PLAIN + EXOTIC if hasattr(torch, n)]
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _random_bits(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor of ``dtype`` holding random bit patterns (NaN payloads, infinities, -0.0 included)."""
    g = np.random.default_rng(seed)
    if dtype == torch.bool:
        return torch.from_numpy(g.integers(0, 2, size=shape).astype(bool))
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = g.integers(0, 256, size=(*shape, itemsize), dtype=np.uint8)
    flat = torch.from_numpy(raw.reshape(-1, itemsize).copy())
    if itemsize == 16:  # complex128: two float64
        return flat.view(torch.float64).view(torch.complex128).reshape(shape)
    return flat.view(_INT_OF_SIZE[itemsize]).view(dtype).reshape(shape)


def _bits(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        return t.numpy().tobytes()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and _bits(a) == _bits(b)


# -- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exactly(dtype: torch.dtype) -> None:
    state = {
        "big": _random_bits(dtype, (64, 33), seed=1),  # chunked: its own zarr array
        "small": _random_bits(dtype, (5,), seed=2),  # packed
        "scalar": _random_bits(dtype, (), seed=3),
    }
    url = cloudckpt.save(
        f"memory://torch-dtype-{str(dtype)[6:]}/c", state, options=cloudckpt.StoreOptions(pack_threshold=100, chunk_bytes=256)
    )
    out = cloudckpt.load(url, framework="torch")
    for k, v in state.items():
        assert isinstance(out[k], torch.Tensor), k
        assert _same(out[k], v), (k, out[k], v)
    # the numpy view carries the matching numpy / ml_dtypes dtype
    as_np = cloudckpt.load(url)["big"]
    assert as_np.dtype == ttorch.numpy_dtype(dtype)
    assert as_np.tobytes() == _bits(state["big"])


def test_bfloat16_values_are_the_torch_values() -> None:
    t = torch.tensor([1.5, -0.0, float("inf"), 3.140625, 1e-40], dtype=torch.bfloat16)
    url = cloudckpt.save("memory://torch-bf16/c", {"t": t})
    back = cloudckpt.load(url)["t"]
    assert str(back.dtype) == "bfloat16"
    np.testing.assert_array_equal(back.astype(np.float32), t.float().numpy())
    assert cloudckpt.load(url, framework="torch")["t"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: torch.zeros(2, dtype=torch.complex32), "complex32"),
        (lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8), "quantized"),
        (lambda: torch.eye(3).to_sparse(), "sparse"),
        (lambda: torch.empty(2, device="meta"), "meta"),
    ],
    ids=["complex32", "quantized", "sparse", "meta"],
)
def test_unstorable_tensors_are_refused_naming_the_leaf(make, words: str) -> None:
    with pytest.raises(TypeError) as exc:
        cloudckpt.save("memory://torch-refused/c", {"model": {"w": make()}})
    msg = str(exc.value)
    assert "'model/w'" in msg and words in msg, msg
    assert not open_storage("memory://torch-refused/c").exists("manifest.json")


# -- layouts --------------------------------------------------------------------------------


def test_non_contiguous_and_lazy_views_are_stored_by_value() -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    c = torch.complex(torch.randn(3, 4), torch.randn(3, 4))
    state = {
        "transposed": base.transpose(0, 2),
        "strided": base[:, ::2, 1::3],
        "expanded": torch.arange(4.0).expand(3, 4),  # stride 0
        "bf16_t": base.to(torch.bfloat16).permute(2, 0, 1),
        "conj": c.conj(),  # lazy conjugation bit
        "neg": torch._neg_view(base),  # lazy negation bit
        "grad": torch.nn.Parameter(torch.ones(2, 2)),
    }
    assert not state["transposed"].is_contiguous() and state["conj"].is_conj() and state["neg"].is_neg()
    url = cloudckpt.save("memory://torch-views/c", state, options=cloudckpt.StoreOptions(pack_threshold=64, chunk_bytes=64))
    out = cloudckpt.load(url, framework="torch")
    for k, v in state.items():
        want = v.detach().resolve_conj().resolve_neg().contiguous()
        assert out[k].is_contiguous(), k
        assert _same(out[k], want), k


def test_cpu_tensors_are_viewed_without_a_copy() -> None:
    t = torch.arange(10, dtype=torch.bfloat16)
    a = ttorch.to_numpy(t)
    assert a.__array_interface__["data"][0] == t.data_ptr()
    b = ttorch.from_numpy(np.arange(4, dtype=np.float32))
    assert b is not None and b.dtype == torch.float32
    src = np.arange(4, dtype=np.int64)
    assert ttorch.from_numpy(src).data_ptr() == src.__array_interface__["data"][0]


def test_big_endian_and_foreign_dtypes_in_framework_load() -> None:
    state = {"be": np.arange(4, dtype=">f4"), "names": np.array(["a", "bc"]), "n": np.int64(3), "x": 1.5}
    url = cloudckpt.save("memory://torch-foreign/c", state)
    out = cloudckpt.load(url, framework="torch")
    assert out["be"].dtype == torch.float32 and out["be"].tolist() == [0, 1, 2, 3]
    assert isinstance(out["names"], np.ndarray)  # torch has no strings: left as numpy
    assert out["n"] == 3 and type(out["n"]) is np.int64 and out["x"] == 1.5


# -- tied weights ---------------------------------------------------------------------------


class TiedLM(torch.nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mid = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.embed(x))))


def test_tied_weights_are_stored_once_and_load_tied() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    sd = model.state_dict()
    sd_view = {"row": model.embed.weight[3]}  # a view of part of the storage: not an alias
    url = cloudckpt.save("memory://torch-tied/c", {"model": sd, "extra": sd_view})
    info = cloudckpt.info(url)
    assert info.format_version == 2
    names = [leaf["name"] for leaf in info.leaves]
    assert "'model/embed.weight'" in names and "'model/head.weight'" not in names
    assert info.nbytes == sum(v.numel() * v.element_size() for k, v in sd.items() if k != "head.weight") + 16 * 4

    out = cloudckpt.load(url, framework="torch")
    assert out["model"]["head.weight"] is out["model"]["embed.weight"]
    assert torch.equal(out["model"]["head.weight"], model.head.weight)
    assert torch.equal(out["extra"]["row"], model.embed.weight[3])
    # a partial load of only the alias reads the array it refers to
    part = cloudckpt.load(url, keys=["model/head.weight"], framework="torch")
    assert torch.equal(part["model"]["head.weight"], model.head.weight)

    fresh = TiedLM()
    emb = fresh.embed.weight
    cloudckpt.Checkpoint(model=fresh).read(cloudckpt.Checkpoint(model=model).write("memory://torch-tied/ckpt"))
    assert fresh.head.weight is fresh.embed.weight is emb  # still tied, same parameter
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_tied_tensors_in_a_checkpoint_tree_stay_one_object() -> None:
    w = torch.randn(4, 4)
    tree = {"a": w, "b": w, "c": [w]}
    url = cloudckpt.Checkpoint(tree=tree).write("memory://torch-tied-tree/c")
    target = torch.zeros(4, 4)
    ckpt = cloudckpt.Checkpoint(tree={"a": target, "b": target, "c": [target]})
    ckpt.read(url)
    assert ckpt.tree["a"] is ckpt.tree["b"] is ckpt.tree["c"][0] is target
    assert torch.equal(target, w)


# -- in-place restore -----------------------------------------------------------------------


def test_tensors_in_checkpoint_trees_are_restored_in_place() -> None:
    p = torch.nn.Parameter(torch.randn(3, 3))
    t = torch.randn(2, 5).to(torch.bfloat16)
    nc = torch.zeros(5, 2).t()  # a non-contiguous target
    step = torch.tensor(7)
    saved = {k: v.detach().clone() for k, v in {"p": p, "t": t, "nc": torch.randn(2, 5), "step": step}.items()}
    url = cloudckpt.Checkpoint(p=saved["p"], tree={"t": saved["t"], "l": [saved["nc"]]}, step=saved["step"]).write(
        "memory://torch-inplace/c"
    )

    p2, t2, nc2, step2 = torch.nn.Parameter(torch.zeros(3, 3)), torch.zeros(2, 5, dtype=torch.bfloat16), nc, torch.tensor(0)
    ckpt = cloudckpt.Checkpoint(p=p2, tree={"t": t2, "l": [nc2]}, step=step2)
    ckpt.read(url)
    assert ckpt.p is p2 and ckpt.tree["t"] is t2 and ckpt.tree["l"][0] is nc2 and ckpt.step is step2
    assert torch.equal(p2, saved["p"]) and p2.requires_grad
    assert _same(t2, saved["t"]) and torch.equal(nc2, saved["nc"]) and int(step2) == 7

    # load(target=) does the same
    t3 = torch.zeros(2, 5, dtype=torch.bfloat16)
    out = cloudckpt.load(url, keys="tree/t", target={"tree": {"t": t3}})
    assert out["tree"]["t"] is t3 and _same(t3, saved["t"])


def test_mismatched_tensor_restore_changes_nothing() -> None:
    url = cloudckpt.Checkpoint(a=torch.ones(2), b=torch.ones(3)).write("memory://torch-mismatch/c")
    a, b = torch.zeros(2), torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError) as exc:
        cloudckpt.Checkpoint(a=a, b=b).read(url)
    assert "'b'" in str(exc.value) and "(4,)" in str(exc.value)
    assert a.sum() == 0  # nothing was changed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensors_round_trip_to_the_target_device() -> None:  # pragma: no cover - needs a GPU
    model = torch.nn.Linear(8, 4).cuda().to(torch.bfloat16)
    url = cloudckpt.Checkpoint(model=model, t=torch.arange(5.0, device="cuda")).write("memory://torch-cuda/c")
    fresh = torch.nn.Linear(8, 4).cuda().to(torch.bfloat16)
    t = torch.zeros(5, device="cuda")
    cloudckpt.Checkpoint(model=fresh, t=t).read(url)
    assert fresh.weight.device.type == "cuda" and torch.equal(fresh.weight, model.weight)
    assert t.device.type == "cuda" and t.tolist() == [0, 1, 2, 3, 4]
    out = cloudckpt.load(url, framework="torch", device="cuda")
    assert out["t"].device.type == "cuda"


# -- optimizers and training ----------------------------------------------------------------


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 8, generator=g)
    return x, (x @ torch.randn(8, 1, generator=g)).tanh()


def _setup(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, object, object]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return model, opt, sched, scaler


def _train(model, opt, sched, scaler, steps: range) -> list[float]:
    x, y = _data()
    losses = []
    for step in steps:
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
    return losses


def test_optimizer_state_round_trips_and_a_fresh_optimizer_accepts_it() -> None:
    model, opt, sched, scaler = _setup()
    _train(model, opt, sched, scaler, range(4))
    url = cloudckpt.Checkpoint(optimizer=opt).write("memory://torch-opt/c")
    raw = cloudckpt.load(url)["optimizer"]
    assert sorted(raw["state"]) == [0, 1, 2, 3]  # int keys survive
    assert raw["param_groups"][0]["params"] == [0, 1, 2, 3] and raw["param_groups"][0]["betas"] == (0.9, 0.999)

    _, opt2, _, _ = _setup(seed=1)
    assert opt2.state_dict()["state"] == {}  # fresh: no state yet
    cloudckpt.Checkpoint(optimizer=opt2).read(url)
    want, got = opt.state_dict(), opt2.state_dict()
    assert want["param_groups"] == got["param_groups"]
    for i, s in want["state"].items():
        for k, v in s.items():
            assert _same(got["state"][i][k], v), (i, k)


def test_restored_training_continues_bit_identically(tmp_path) -> None:
    reference = _train(*_setup(), steps=range(10))

    model, opt, sched, scaler = _setup()
    first = _train(model, opt, sched, scaler, range(5))
    ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, scheduler=sched, scaler=scaler, step=5)
    manager = cloudckpt.CheckpointManager(ckpt, str(tmp_path / "run"), max_to_keep=2)
    manager.save()
    scale_at_save = scaler.get_scale()
    _train(model, opt, sched, scaler, range(5, 7))  # progress that is lost with the "crash"

    model2, opt2, sched2, scaler2 = _setup(seed=99)  # a new process: other initial weights
    ckpt2 = cloudckpt.Checkpoint(model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2, step=0)
    assert cloudckpt.CheckpointManager(ckpt2, str(tmp_path / "run"), max_to_keep=2).restore_or_initialize()
    assert ckpt2.step == 5 and sched2.last_epoch == 5 and scaler2.get_scale() == scale_at_save
    rest = _train(model2, opt2, sched2, scaler2, range(ckpt2.step, 10))
    assert first + rest == reference  # bit-identical floats


def test_manager_with_a_torch_model_on_every_backend(backend) -> None:
    model, opt, sched, scaler = _setup()
    step = torch.tensor(0)
    ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=step)
    manager = cloudckpt.CheckpointManager(
        ckpt, backend.url("run"), max_to_keep=2, storage_options=backend.storage_options, async_save=True
    )
    assert manager.restore_or_initialize() is None
    for _ in range(3):
        _train(model, opt, sched, scaler, range(int(step), int(step) + 1))
        step += 1
        manager.save()
        model[0].weight.data.add_(100.0)  # mutate right after save(): the copy was taken already
        model[0].weight.data.sub_(100.0)
    manager.sync()
    assert [u.rsplit("/", 1)[1] for u in manager.checkpoints] == ["ckpt-2", "ckpt-3"]

    model2, opt2, _, _ = _setup(seed=5)
    step2 = torch.tensor(0)
    ckpt2 = cloudckpt.Checkpoint(model=model2, optimizer=opt2, step=step2)
    url = cloudckpt.CheckpointManager(
        ckpt2, backend.url("run"), max_to_keep=2, storage_options=backend.storage_options
    ).restore_or_initialize()
    assert url is not None and url.endswith("ckpt-3") and int(step2) == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)  # the weights were mutated and un-mutated after the save
    assert opt2.state_dict()["state"][0]["step"] == 3


# -- lazy registration ----------------------------------------------------------------------


def test_the_core_never_imports_torch_and_needs_no_setup_call() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        import numpy as np, cloudckpt
        url = cloudckpt.save("memory://lazy/c", {"w": np.ones(2)})
        cloudckpt.Checkpoint(w=np.zeros(2)).read(url)
        before = sorted(m for m in ("torch", "jax", "cloudckpt.frameworks.torch") if m in sys.modules)
        import torch                       # the user imports torch: tensors just work
        url = cloudckpt.save("memory://lazy/t", {"t": torch.ones(2, dtype=torch.bfloat16)})
        t = cloudckpt.load(url, framework="torch")["t"]
        print(json.dumps({"before": before, "dtype": str(t.dtype), "jax": "jax" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"before": [], "dtype": "torch.bfloat16", "jax": False}


def test_version_2_manifests_validate_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path
    from typing import NamedTuple

    class State(NamedTuple):
        count: torch.Tensor
        weights: dict

    w = torch.randn(3, 3)
    url = cloudckpt.save("memory://torch-schema/c", {"a": w, "b": w, "s": State(torch.tensor(1), {"w": w})})
    manifest = json.loads(open_storage(url).read("manifest.json"))
    assert manifest["format_version"] == 2
    assert [n["t"] for n in manifest["tree"]["v"]] == ["array", "alias", "tuple"]
    schema = json.loads((Path(cloudckpt.__file__).parent / "format" / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)
    # an alias of an array that no array node holds is refused
    manifest["tree"]["v"][1]["a"] = len(manifest["arrays"]) - 1 + 1
    s = open_storage(url)
    s.delete(["manifest.json"])
    s.write("manifest.json", encode_manifest(manifest))
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="alias"):
        cloudckpt.load(url)
