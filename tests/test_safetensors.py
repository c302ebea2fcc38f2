"""safetensors in and out: ``export_safetensors`` / ``import_safetensors`` and ``cloudckpt export`` / ``import``.

The files written are read back with the ``safetensors`` package itself (and
with ``transformers``' ``from_pretrained`` on a tiny GPT-2); files written by
``safetensors`` are imported. Tests that need ``safetensors`` skip naming it
(``pip install cloudckpt[safetensors]``); those that need torch or
transformers skip naming torch.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
import uuid

import numpy as np
import pytest
import servers
from click.testing import CliRunner

import cloudckpt
from cloudckpt.format.dtypes import parse_dtype
from cloudckpt.storage import open_storage
from cloudckpt.tools import cli
from cloudckpt.tools.safetensors_io import export_safetensors, import_safetensors
from cloudckpt.tools.safetensors_io.spec import DTYPES

NUMPY_LOADS = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "C64"}


@pytest.fixture
def st():
    """The ``safetensors`` package (the reference reader)."""
    return pytest.importorskip("safetensors", reason="safetensors is not installed (pip install cloudckpt[safetensors])")


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def random_array(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Every bit pattern the dtype has (NaNs included), from random bytes; bools are 0 or 1."""
    dtype = parse_dtype(DTYPES[name])
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if name == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def header_of(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    return json.loads(data[8 : 8 + n])


def supports(st, name: str) -> bool:
    """Whether the installed safetensors reads dtype ``name`` (a file of one element of it)."""
    n = parse_dtype(DTYPES[name]).itemsize
    h = json.dumps({"x": {"dtype": name, "shape": [1], "data_offsets": [0, n]}})
    h += " " * (-(len(h) + 8) % 8)
    try:
        st.deserialize(struct.pack("<Q", len(h)) + h.encode() + bytes(n))
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- every dtype, bit-exact


@pytest.mark.parametrize("name", list(DTYPES))
def test_round_trip_is_bit_exact_for_every_dtype(st, name, tmp_path) -> None:
    shape = (7, 5)
    if not supports(st, name):
        pytest.skip(f"the installed safetensors {st.__version__} has no dtype {name}")
    arr = random_array(name, shape)
    scalar = random_array(name, (), seed=1)
    state = {"model": {"layer.0.w": arr, "s": scalar}, "step": 3}
    ckpt = cloudckpt.save(str(tmp_path / "c"), state)
    report = export_safetensors(ckpt, str(tmp_path / "hf"), prefix="model")
    assert [os.path.basename(f) for f in report.files] == ["model.safetensors"] and report.index is None
    data = (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert header_of(data)["__metadata__"] == {"format": "pt"}
    # the reference reader: names, dtype, shape and bytes
    got = {k: v for k, v in st.deserialize(data)}
    assert set(got) == {"layer.0.w", "s"}
    assert got["layer.0.w"]["dtype"] == name and list(got["layer.0.w"]["shape"]) == list(shape)
    assert bytes(got["layer.0.w"]["data"]) == arr.tobytes()
    assert list(got["s"]["shape"]) == [] and bytes(got["s"]["data"]) == scalar.tobytes()
    if name in NUMPY_LOADS:
        from safetensors.numpy import load_file

        loaded = load_file(str(tmp_path / "hf" / "model.safetensors"))
        assert loaded["layer.0.w"].dtype == arr.dtype and loaded["layer.0.w"].tobytes() == arr.tobytes()
    # and back: the same dtype and bytes, and an export of the import is the same file
    back = import_safetensors(str(tmp_path / "hf"), str(tmp_path / "c2"), prefix="model")
    assert back.tensors == 2
    restored = cloudckpt.load(back.url)["model"]
    assert restored["layer.0.w"].dtype == arr.dtype and restored["layer.0.w"].tobytes() == arr.tobytes()
    assert restored["s"].dtype == arr.dtype and restored["s"].shape == () and restored["s"].tobytes() == scalar.tobytes()
    export_safetensors(back.url, str(tmp_path / "hf2"), prefix="model")
    assert (tmp_path / "hf2" / "model.safetensors").read_bytes() == data


def test_sub_byte_dtypes_are_refused_naming_the_file_and_tensor(tmp_path) -> None:
    h = json.dumps({"w": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}})
    h += " " * (-(len(h) + 8) % 8)
    (tmp_path / "f4.safetensors").write_bytes(struct.pack("<Q", len(h)) + h.encode() + b"\0\0")
    with pytest.raises(ValueError, match=r"f4\.safetensors: tensor 'w': dtype F4 packs several values per byte"):
        import_safetensors(str(tmp_path / "f4.safetensors"), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_files_written_by_safetensors_import(st, tmp_path) -> None:
    from safetensors.numpy import save_file

    tensors = {"a.weight": random_array("F32", (4, 3)), "b": random_array("I64", (2,)), "z": np.zeros((0, 3), "f2")}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "np", "note": "x"})
    r = import_safetensors(str(tmp_path / "w.safetensors"), str(tmp_path / "c"))
    assert r.metadata == {"format": "np", "note": "x"}
    out = cloudckpt.load(r.url)
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and out[k].tobytes() == v.tobytes()
    assert cloudckpt.info(r.url).metadata["safetensors"] == {"format": "np", "note": "x"}


# ---------------------------------------------------------------- shards, names, leaves


def test_sharded_export_has_hf_names_an_index_and_loadable_shards(st, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    rng = np.random.default_rng(3)
    model = {f"h.{i}.w": rng.standard_normal((50, 10)).astype("f4") for i in range(6)}  # 2000 B each
    model["big"] = rng.standard_normal(1500).astype("f4")  # 6000 B: larger than a shard, alone in its file
    model["tiny"] = np.arange(3, dtype="i1")
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"model": model, "opt": {"lr": 0.1}})
    r = export_safetensors(ckpt, str(tmp_path / "hf"), prefix="model", max_shard_size=4500)
    names = sorted(os.listdir(tmp_path / "hf"))
    n = len(r.files)
    assert n == 5, names  # [h0 h1] [h2 h3] [h4 h5] [big] [tiny]
    assert names == sorted([f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)] + ["model.safetensors.index.json"])
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in model.values()) == r.nbytes
    assert set(index["weight_map"]) == set(model) and set(index["weight_map"].values()) == {os.path.basename(f) for f in r.files}
    seen = {}
    for f in r.files:
        size = os.path.getsize(f)
        loaded = load_file(f)
        assert all(index["weight_map"][k] == os.path.basename(f) for k in loaded)
        payload = sum(v.nbytes for v in loaded.values())
        assert payload <= 4500 or list(loaded) == ["big"], (f, payload)
        with safe_open(f, framework="np") as sf:
            assert sf.metadata() == {"format": "pt"}
            for k in sf.keys():
                seen[k] = sf.get_tensor(k)
        assert size == payload + 8 + struct.unpack("<Q", open(f, "rb").read(8))[0]
    assert set(seen) == set(model)
    for k, v in model.items():
        assert seen[k].tobytes() == v.tobytes()
    # importing the directory (through its index) gives the same state
    back = import_safetensors(str(tmp_path / "hf"), str(tmp_path / "c2"), prefix="model")
    assert back.files == r.files and back.tensors == len(model)
    restored = cloudckpt.load(back.url)["model"]
    assert {k: v.tobytes() for k, v in restored.items()} == {k: v.tobytes() for k, v in model.items()}


def test_keys_are_joined_with_dots_and_other_leaves_are_skipped(st, tmp_path) -> None:
    from safetensors.numpy import load_file

    state = {
        "model": {"enc": {"layers": [np.ones(2, "f4"), np.zeros(2, "f4")]}, "head.bias": np.ones(1, "f2")},
        "step": 7,
        "name": "run",
        "opt": {"m": np.ones(2, "f4")},
    }
    ckpt = cloudckpt.save(str(tmp_path / "c"), state)
    r = export_safetensors(ckpt, str(tmp_path / "all"))
    assert sorted(r.skipped) == ["name", "step"]
    assert sorted(load_file(r.files[0])) == ["model.enc.layers.0", "model.enc.layers.1", "model.head.bias", "opt.m"]
    r = export_safetensors(ckpt, str(tmp_path / "enc"), prefix="model/enc")
    assert sorted(load_file(r.files[0])) == ["layers.0", "layers.1"] and r.skipped == []


def test_sharded_big_endian_empty_and_odd_named_tensors_export_and_import(st, tmp_path) -> None:
    from safetensors.numpy import load_file

    full = np.arange(48, dtype="<f4").reshape(6, 8)
    sharded = cloudckpt.ShardedArray((6, 8), full.dtype, [((0, 0), full[:2]), ((2, 0), full[2:])])  # uneven
    state = {
        "sharded": sharded,  # stored as shard objects: read back whole by regions
        "big_endian": np.arange(5, dtype=">i4"),
        "empty": np.zeros((0, 3), "f2"),
        "odd": {"a/b c": np.ones(2, "u1"), "é": np.zeros(1, "i8")},
    }
    ckpt = cloudckpt.save(str(tmp_path / "c"), state, options=cloudckpt.StoreOptions(pack_threshold=0))
    assert {e["stored_as"] for e in cloudckpt.info(ckpt).leaves if e["path"] == ["sharded"]} == {"shards"}
    r = export_safetensors(ckpt, str(tmp_path / "hf"))
    loaded = load_file(r.files[0])
    assert sorted(loaded) == ["big_endian", "empty", "odd.a/b c", "odd.é", "sharded"]
    assert np.array_equal(loaded["sharded"], full) and loaded["sharded"].dtype == np.dtype("<f4")
    assert loaded["big_endian"].dtype == np.dtype("<i4") and loaded["big_endian"].tolist() == [0, 1, 2, 3, 4]
    assert loaded["empty"].shape == (0, 3) and loaded["empty"].dtype == np.float16
    back = cloudckpt.load(import_safetensors(str(tmp_path / "hf"), str(tmp_path / "c2")).url)
    assert back["odd.a/b c"].tolist() == [1, 1] and back["empty"].shape == (0, 3) and np.array_equal(back["sharded"], full)
    export_safetensors(str(tmp_path / "c2"), str(tmp_path / "hf2"))
    assert (tmp_path / "hf2" / "model.safetensors").read_bytes() == (tmp_path / "hf" / "model.safetensors").read_bytes()


def test_two_paths_joining_to_one_name_are_refused_naming_both(tmp_path) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"a.b": np.ones(1), "a": {"b": np.zeros(1)}})
    with pytest.raises(ValueError, match=r"tensors 'a\.b' and 'a/b' both export as 'a\.b'"):
        export_safetensors(ckpt, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_unsupported_dtype_and_empty_prefix_are_clear_errors(tmp_path) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"model": {"w": np.ones(2, "c16")}, "x": np.ones(1)})
    with pytest.raises(ValueError, match=r"tensor 'model/w' has dtype complex128, which safetensors has no type for"):
        export_safetensors(ckpt, str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"no tensor under prefix 'nope' to export"):
        export_safetensors(ckpt, str(tmp_path / "hf"), prefix="nope")


def test_an_existing_export_is_refused_unless_overwrite_which_removes_stale_shards(st, tmp_path) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {f"w{i}": np.full(100, i, "u1") for i in range(3)})
    export_safetensors(ckpt, str(tmp_path / "hf"), max_shard_size=100)
    assert len(os.listdir(tmp_path / "hf")) == 4
    with pytest.raises(cloudckpt.CheckpointError, match="already holds an export"):
        export_safetensors(ckpt, str(tmp_path / "hf"))
    (tmp_path / "hf" / "README.md").write_text("kept")
    export_safetensors(ckpt, str(tmp_path / "hf"), overwrite=True)
    assert sorted(os.listdir(tmp_path / "hf")) == ["README.md", "model.safetensors"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], r"the tensors end at byte {n} but the file has {m} bytes"),
        (lambda d: d + b"\0", r"the tensors end at byte {n} but the file has {p} bytes"),
        (lambda d: struct.pack("<Q", 10**12) + d[8:], r"not a safetensors file: header length 1000000000000"),
        (lambda d: d[:8] + b"[" + d[9:], r"the safetensors header is not JSON"),
        (lambda d: d.replace(b'"F32"', b'"X32"'), r"unknown safetensors dtype 'X32'"),
        (lambda d: d.replace(b"[0,4]", b"[0,3]"), r"data_offsets \[0, 3\] hold 3 bytes, the shape and dtype 4"),
    ],
    ids=["truncated", "padded", "huge-header", "not-json", "bad-dtype", "bad-offsets"],
)
def test_a_damaged_file_is_refused_before_anything_is_written(tmp_path, mutate, message) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"w": np.ones(1, "f4")})
    export_safetensors(ckpt, str(tmp_path / "hf"))
    data = (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert header_of(data)["w"] == {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    (tmp_path / "bad.safetensors").write_bytes(mutate(data))
    n = len(data)
    with pytest.raises(ValueError, match=message.format(n=n, m=n - 1, p=n + 1)):
        import_safetensors(str(tmp_path / "bad.safetensors"), str(tmp_path / "c2"))
    assert not (tmp_path / "c2").exists()


def test_import_into_a_committed_checkpoint_is_refused_before_reading_anything(tmp_path) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"w": np.ones(1)})
    # the source does not even exist: the destination is checked first
    with pytest.raises(cloudckpt.CheckpointExistsError, match="a committed checkpoint already exists at"):
        import_safetensors(str(tmp_path / "nowhere"), ckpt)
    assert cloudckpt.load(ckpt)["w"].tolist() == [1.0]


def test_an_index_that_does_not_match_its_files_is_refused(tmp_path) -> None:
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"a": np.ones(10, "u1"), "b": np.ones(10, "u1")})
    export_safetensors(ckpt, str(tmp_path / "hf"), max_shard_size=10)
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    index["weight_map"]["c"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"does not match the files: tensor 'b' is in model-00002-of-00002.safetensors, the index says model-00001"):
        import_safetensors(str(tmp_path / "hf"), str(tmp_path / "c2"))
    index["weight_map"]["a"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names '\.\./elsewhere\.safetensors', which is not a file of this directory"):
        import_safetensors(str(index_path), str(tmp_path / "c2"))


# ---------------------------------------------------------------- any URL to any URL


def test_export_to_and_import_from_every_backend(st, backend, tmp_path) -> None:
    from safetensors.numpy import load

    rng = np.random.default_rng(5)
    model = {f"blocks.{i}.w": rng.standard_normal((64, 64)).astype("f4") for i in range(4)}
    ckpt = cloudckpt.save(str(tmp_path / "c"), {"model": model})
    # local checkpoint -> the backend, sharded
    r = export_safetensors(
        ckpt, backend.url("hf"), prefix="model", max_shard_size=20000, dest_storage_options=backend.storage_options
    )
    assert len(r.files) == 4 and r.index == backend.url("hf", "model.safetensors.index.json")
    remote = open_storage(backend.url("hf"), backend.storage_options)
    for f in r.files:
        loaded = load(remote.read(f.rsplit("/", 1)[1]))
        assert all(loaded[k].tobytes() == model[k].tobytes() for k in loaded)
    # the backend -> a checkpoint on the backend (spooled through local disk), and back to local files
    back = import_safetensors(
        backend.url("hf"), backend.url("c2"), prefix="model",
        storage_options=backend.storage_options, ckpt_storage_options=backend.storage_options, buffer_bytes=20000,
    )  # fmt: skip
    restored = cloudckpt.load(back.url, storage_options=backend.storage_options)["model"]
    assert {k: v.tobytes() for k, v in restored.items()} == {k: v.tobytes() for k, v in model.items()}
    r2 = export_safetensors(
        back.url, str(tmp_path / "hf2"), prefix="model", max_shard_size=20000, storage_options=backend.storage_options
    )
    assert [open(f, "rb").read() for f in r2.files] == [remote.read(f.rsplit("/", 1)[1]) for f in r.files]


# ---------------------------------------------------------------- memory


def test_memory_is_bounded_by_the_largest_shard(st, tmp_path) -> None:
    """A 48 MiB state (24 tensors of 2 MiB) exported from memory:// in 4 MiB files,
    and imported back from memory://: the peak of fresh allocations stays near one shard
    (or one pack object, read whole, if that is larger)."""
    rng = np.random.default_rng(7)
    state = {"model": {f"l{i}.w": rng.standard_normal(1 << 19).astype("f4") for i in range(24)}}
    root = f"memory://st-mem-{uuid.uuid4().hex[:8]}"
    ckpt = cloudckpt.save(f"{root}/c", state)
    total = sum(v.nbytes for v in state["model"].values())
    del state
    shard = 4 << 20
    tracemalloc.start()
    try:
        r = export_safetensors(ckpt, str(tmp_path / "hf"), prefix="model", max_shard_size=shard)
        _, export_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.nbytes == total == 48 << 20 and len(r.files) == 12 and r.largest_shard == shard
    # memory:// reads a pack object needed for at least half of it whole, into one temporary bytes:
    # at most one pack object (8 MiB) beside the shard
    assert export_peak < max(shard, 8 << 20) + (2 << 20), export_peak
    export_safetensors(ckpt, f"{root}/hf", prefix="model", max_shard_size=shard)
    tracemalloc.start()
    try:
        back = import_safetensors(f"{root}/hf", str(tmp_path / "c2"), prefix="model", buffer_bytes=shard)
        _, import_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert back.nbytes == total
    assert import_peak < shard + (2 << 20), import_peak
    assert cloudckpt.load(back.url, keys="model/l3.w")["model"]["l3.w"].tobytes() == cloudckpt.load(
        ckpt, keys="model/l3.w"
    )["model"]["l3.w"].tobytes()


# ---------------------------------------------------------------- the commands


def test_cli_export_and_import_with_exit_statuses(st, tmp_path, s3_server, s3_bucket) -> None:
    so = servers.s3_storage_options(s3_server.endpoint_url)
    def flags(side: str) -> list[str]:
        return [x for k, v in so.items() for x in (side, f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]

    ckpt = cloudckpt.save(str(tmp_path / "c"), {"model": {"a.w": np.ones((8, 8), "f4"), "b": np.arange(64, dtype="i2")}, "step": 2})
    dest = f"s3://{s3_bucket}/st-cli-{uuid.uuid4().hex[:8]}"
    res = run("export", ckpt, dest, "--max-shard-size", "300", "-q", *flags("--dst-option"))
    assert res.exit_code == 0, res.output
    assert f"wrote {dest}/model-00001-of-00002.safetensors" in res.output
    assert f"wrote {dest}/model.safetensors.index.json" in res.output
    assert "note: not a tensor, not exported: step" in res.output
    assert "exported 2 tensors (384 B) in 2 files" in res.output
    res = run("export", ckpt, dest, "-q", *flags("--dst-option"))  # an export is there
    assert res.exit_code == 5 and "already holds an export" in res.output
    res = run("export", ckpt, f"{dest}-x", "--max-shard-size", "lots", "-q", *flags("--dst-option"))
    assert res.exit_code == 2 and "max shard size 'lots'" in res.output
    res = run("export", str(tmp_path / "nothing"), str(tmp_path / "o"), "-q")
    assert res.exit_code == 3
    res = run("export", ckpt, tmp_path / "one" / "weights.safetensors", "--json", "-q")  # one file, named
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["files"] == [str(tmp_path / "one" / "weights.safetensors")] and doc["index"] is None
    assert doc["skipped"] == ["step"] and doc["tensors"] == 2 and doc["largest_shard"] == 384
    assert os.listdir(tmp_path / "one") == ["weights.safetensors"]
    # import it back, from S3 to local disk, as JSON
    res = run("import", dest, tmp_path / "c2", "-q", "--json", *flags("--src-option"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["tensors"] == 2 and doc["nbytes"] == 384 and doc["url"] == str(tmp_path / "c2")
    restored = cloudckpt.load(str(tmp_path / "c2"))  # the names as exported: a flat dict
    assert sorted(restored) == ["model.a.w", "model.b"]
    assert restored["model.b"].tobytes() == np.arange(64, dtype="i2").tobytes() and restored["model.a.w"].dtype == np.float32
    res = run("import", dest, tmp_path / "c2", "-q", *flags("--src-option"))  # a committed checkpoint is there
    assert res.exit_code == 5
    (tmp_path / "empty").mkdir()
    res = run("import", tmp_path / "empty", tmp_path / "c3", "-q")
    assert res.exit_code == 3 and "no .safetensors file at" in res.output
    res = run("import", dest, tmp_path / "c4", "--format", "gguf", "-q", *flags("--src-option"))
    assert res.exit_code == 2
    assert "export" in run("--help").output and "import" in run("--help").output


# ---------------------------------------------------------------- transformers


def test_transformers_from_pretrained_loads_an_export(tmp_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the transformers test needs torch)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (needs torch)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ckpt = cloudckpt.save(str(tmp_path / "ckpt-1"), {"model": model.state_dict(), "step": 10})
    res = run("export", tmp_path / "ckpt-1", tmp_path / "hf", "--prefix", "model", "-q")
    assert res.exit_code == 0, res.output
    config.save_pretrained(str(tmp_path / "hf"))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    want, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    ids = torch.arange(8)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # and a bfloat16 save of the model round-trips through import
    bf = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    ckpt = cloudckpt.save(str(tmp_path / "ckpt-2"), {"model": bf})
    export_safetensors(ckpt, str(tmp_path / "hf-bf"), prefix="model")
    from safetensors.torch import load_file

    files = load_file(str(tmp_path / "hf-bf" / "model.safetensors"))
    assert all(torch.equal(files[k], v) for k, v in bf.items())
    back = cloudckpt.load(import_safetensors(str(tmp_path / "hf-bf"), str(tmp_path / "ckpt-3")).url, framework="torch")
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v) for k, v in bf.items())


def test_the_example_trains_on_s3_exports_loads_with_transformers_and_imports(s3_server, s3_bucket, tmp_path) -> None:
    pytest.importorskip("torch", reason="torch is not installed (examples/safetensors_hf_export.py needs torch)")
    pytest.importorskip("transformers", reason="transformers is not installed (the example needs torch and transformers)")
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "safetensors_hf_export.py"
    root = f"s3://{s3_bucket}/example-st-{uuid.uuid4().hex[:8]}"
    here = str(Path(cloudckpt.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, str(script), "--root", root, "--endpoint-url", s3_server.endpoint_url, "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from_pretrained: same logits as the trained model" in proc.stdout
    assert f"committed {root}/imported/ckpt-3" in proc.stdout and "imported checkpoint: same logits" in proc.stdout
    assert sorted(os.listdir(out)) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    ]  # fmt: skip
    so = servers.s3_storage_options(s3_server.endpoint_url)
    assert cloudckpt.latest_checkpoint(f"{root}/run", storage_options=so) == f"{root}/run/ckpt-3"
