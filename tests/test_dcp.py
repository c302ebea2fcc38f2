"""PyTorch Distributed Checkpoint (DCP) through cloudckpt.dcp.Writer / Reader (skipped without torch).

- one process: bit-exact round trips on every backend (local, memory, S3 on moto,
  GCS on fake-gcs-server), DCP's flattened keys in cloudckpt.load, dcp.async_save;
- the commit: a second save to a committed URL refuses and keeps the first,
  also when another writer commits while a save is between write_data and finish;
- the manager: numbering, max_to_keep, fencing of a manager that lost the directory;
- real processes with gloo (tests/scripts/dcp_worker.py): saved by 2 ranks,
  restored by DCP bit-exactly on 1, 2 and 4 ranks (resharding), on local disk and S3;
  a coordinator SIGKILLed at finish() commits nothing; a manager on 2 ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (cloudckpt.dcp is for torch.distributed.checkpoint)")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import cloudckpt  # noqa: E402
import cloudckpt.dcp  # noqa: E402
from cloudckpt.testing.launch import RankResult, launch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

WORKER = Path(__file__).resolve().parent / "scripts" / "dcp_worker.py"


def make_state(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "layer": {"weight": torch.randn(64, 33, generator=g), "bias": torch.randn(33, generator=g)},
            "emb": torch.randn(300, 40, generator=g).to(torch.bfloat16),
            "half": torch.randn(7, generator=g).to(torch.float16),
            "ids": torch.randint(-(2**40), 2**40, (17,), generator=g),
            "mask": torch.rand(9, generator=g) > 0.5,
            "scalar": torch.tensor(3.5),
        },
        "optim": {"state": {0: {"exp_avg": torch.randn(64, 33, generator=g), "step": torch.tensor(12.0)}},
                  "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0]}]},
        "epoch": 5,
        "tag": "run-a",
    }  # fmt: skip


def zeros_like(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: zeros_like(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(zeros_like(v) for v in state)
    return None if isinstance(state, str) else type(state)()


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape, where
        assert bits(got) == bits(want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


def save(state: Any, url: str, opts: dict[str, Any] | None = None, **kw: Any) -> None:
    small = cloudckpt.StoreOptions(pack_threshold=4096, chunk_bytes=4096)  # packed, single-chunk and multi-chunk arrays
    dcp.save(state, storage_writer=cloudckpt.dcp.Writer(url, storage_options=opts, options=small, **kw), no_dist=True)


def load(target: Any, url: str, opts: dict[str, Any] | None = None) -> Any:
    dcp.load(target, storage_reader=cloudckpt.dcp.Reader(url, storage_options=opts), no_dist=True)
    return target


def failure(exc: CheckpointException) -> BaseException:
    """The error DCP wrapped (rank 0's)."""
    return exc.failures[0][0]  # type: ignore[no-any-return]


# -- one process ------------------------------------------------------------------


def test_round_trip_is_bit_exact_on_every_backend(backend) -> None:
    url, opts = backend.url("c1"), backend.storage_options
    want = make_state()
    save(want, url, opts)
    got = load(zeros_like(want), url, opts)
    assert_same(got, want)
    # a second Reader from nothing but the URL, as another job would
    assert_same(load(zeros_like(want), url, opts)["model"], want["model"])


def test_cloudckpt_load_returns_dcp_flattened_keys_and_the_values(tmp_path) -> None:
    want = make_state(1)
    url = str(tmp_path / "c")
    save(want, url)
    flat = cloudckpt.load(url)
    assert "model.layer.weight" in flat and "optim.state.0.exp_avg" in flat and "model.emb" in flat
    np.testing.assert_array_equal(flat["model.layer.weight"], want["model"]["layer"]["weight"].numpy())
    assert flat["model.emb"].dtype.name == "bfloat16"
    assert flat["model.emb"].view(np.uint16).tobytes() == bits(want["model"]["emb"])
    # non-tensor values are DCP's own serialisation, kept as opaque bytes (never unpickled by cloudckpt)
    assert flat["epoch"].dtype == np.uint8 and flat["epoch"].size > 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_bytes())
    assert manifest["dcp"]["items"]["model.layer.weight"]["size"] == [64, 33]
    assert manifest["dcp"]["items"]["epoch"] == {"t": "bytes"}
    # the checkpoint verifies like any other: every object against its crc32c
    report = cloudckpt.verify(url)
    assert report.ok, report


def test_a_flipped_byte_is_caught_on_load(tmp_path) -> None:
    want = make_state(2)
    url = str(tmp_path / "c")
    save(want, url)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_bytes())
    big = max((o for o in manifest["objects"] if "/c/" in o["key"]), key=lambda o: o["size"])
    path = tmp_path / "c" / big["key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointException) as info:
        load(zeros_like(want), url)
    assert isinstance(failure(info.value), cloudckpt.CorruptCheckpointError)
    assert big["key"] in str(failure(info.value))


def test_a_second_save_to_a_committed_url_refuses_and_keeps_the_first(tmp_path) -> None:
    url = str(tmp_path / "c")
    first = make_state(3)
    save(first, url)
    with pytest.raises(CheckpointException) as info:
        save(make_state(4), url)
    assert isinstance(failure(info.value), cloudckpt.CheckpointExistsError)
    assert url in str(failure(info.value))
    assert_same(load(zeros_like(first), url), first)


def test_a_writer_that_loses_the_commit_race_refuses_at_finish(tmp_path) -> None:
    """Another writer commits between this save's write_data and its finish():
    the create-only manifest refuses, the other checkpoint is untouched and this
    save's data is removed."""
    url = str(tmp_path / "c")
    other = make_state(5)

    class Slow(cloudckpt.dcp.Writer):
        def finish(self, metadata: Any, results: Any) -> None:
            save(other, url)  # the concurrent writer wins
            super().finish(metadata, results)

    with pytest.raises(CheckpointException) as info:
        dcp.save(make_state(6), storage_writer=Slow(url), no_dist=True)
    assert isinstance(failure(info.value), cloudckpt.CheckpointExistsError)
    assert_same(load(zeros_like(other), url), other)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_bytes())
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(["manifest.json", manifest["data"]])


def test_async_save_commits_in_the_background(backend) -> None:
    url, opts = backend.url("a"), backend.storage_options
    want = make_state(7)
    fut = dcp.async_save(want, storage_writer=cloudckpt.dcp.Writer(url, storage_options=opts), no_dist=True)
    fut.result(timeout=120)
    assert_same(load(zeros_like(want), url, opts), want)


def test_reader_of_a_checkpoint_not_written_by_dcp_says_so(tmp_path) -> None:
    url = cloudckpt.save(str(tmp_path / "plain"), {"w": np.ones(2)})
    with pytest.raises(CheckpointException) as info:
        load({"w": torch.zeros(2)}, url)
    assert "not one written by cloudckpt.dcp.Writer" in str(failure(info.value))


def test_manager_numbers_retains_and_fences(backend) -> None:
    directory, opts = backend.url("run"), backend.storage_options
    m1 = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), directory, max_to_keep=2, storage_options=opts)
    w1 = cloudckpt.dcp.Writer(manager=m1, storage_options=opts)
    states = [make_state(10 + i) for i in range(3)]
    for s in states:
        dcp.save(s, storage_writer=w1, no_dist=True)
    assert [u.rsplit("/", 1)[1] for u in m1.checkpoints] == ["ckpt-2", "ckpt-3"]
    assert cloudckpt.latest_checkpoint(directory, storage_options=opts).endswith("ckpt-3")
    assert_same(load(zeros_like(states[2]), m1.latest_checkpoint, opts), states[2])
    # a second owner (a restarted job) claims the directory and continues the numbering;
    # the first one's next dcp.save is refused, nothing written
    m2 = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), directory, max_to_keep=2, storage_options=opts)
    dcp.save(make_state(20), storage_writer=cloudckpt.dcp.Writer(manager=m2, storage_options=opts), no_dist=True)
    with pytest.raises(CheckpointException) as info:
        dcp.save(make_state(21), storage_writer=w1, no_dist=True)
    assert isinstance(failure(info.value), cloudckpt.OwnershipLostError)
    assert [u.rsplit("/", 1)[1] for u in m2.checkpoints] == ["ckpt-3", "ckpt-4"]
    assert cloudckpt.latest_checkpoint(directory, storage_options=opts).endswith("ckpt-4")


def test_manager_writer_takes_no_url() -> None:
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), "memory://dcp-no-url", max_to_keep=1)
    with pytest.raises(ValueError, match="not both"):
        cloudckpt.dcp.Writer("memory://x", manager=m)


def test_import_cloudckpt_does_not_import_the_integration() -> None:
    import subprocess

    code = "import sys, cloudckpt; print('torch' in sys.modules, 'cloudckpt.integrations.dcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# -- real processes (gloo) -----------------------------------------------------------


def run(mode: str, url: str, nproc: int, opts: dict[str, Any] | None = None) -> list[RankResult]:
    env = {"CLOUDCKPT_TEST_STORAGE_OPTIONS": json.dumps(opts)}
    return launch([sys.executable, str(WORKER), mode, url], nproc, env=env, timeout=240)


def results(out: list[RankResult]) -> list[dict[str, Any]]:
    got = []
    for r in out:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}"
        got.append(json.loads(r.lines[-1]))
    return got


@pytest.mark.parametrize("where", ["local", "s3"])
def test_saved_by_2_ranks_restores_bit_exactly_on_1_2_and_4(where: str, request, tmp_path) -> None:
    if where == "s3":
        import servers

        srv = request.getfixturevalue("s3_server")
        url, opts = f"s3://{request.getfixturevalue('s3_bucket')}/dcp-{tmp_path.name}/c", servers.s3_storage_options(srv.endpoint_url)
    else:
        url, opts = str(tmp_path / "c"), None
    results(run("save", url, 2, opts))
    flat = cloudckpt.load(url, storage_options=opts)
    assert {"model.even", "model.uneven", "model.half", "model.replicated", "extra.step", "extra.name"} == set(flat)
    report = cloudckpt.verify(url, storage_options=opts)  # every object the ranks and the coordinator wrote
    assert report.ok and report.checkpoints[0].objects > 6, report
    for n in (1, 2, 4):
        got = results(run("load", url, n, opts))
        for r in got:
            assert r["same"] == {"even": True, "uneven": True, "half": True, "replicated": True}, (n, r)
            assert r["extra"] == {"step": 42, "name": "run-a"}
        rows = [r["local_rows"]["uneven"] for r in got]
        assert sum(rows) == 7 and len(rows) == n  # each rank got its own shard of the 7 rows


def test_a_coordinator_killed_at_finish_commits_nothing(tmp_path) -> None:
    url = str(tmp_path / "c")
    out = run("crash", url, 2)
    assert out[0].returncode == -9 and any("finishing" in line for line in out[0].lines)
    assert not (tmp_path / "c" / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("data-")]  # the data was written
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        cloudckpt.load(url)


def test_a_manager_on_2_ranks_numbers_and_retains(tmp_path) -> None:
    directory = str(tmp_path / "run")
    got = results(run("manager", directory, 2))
    assert got[0]["checkpoints"] == ["ckpt-2", "ckpt-3"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("ckpt-")) == ["ckpt-2", "ckpt-3"]
    flat = cloudckpt.load(cloudckpt.latest_checkpoint(directory))
    assert flat["model.replicated"].tolist() == list(range(10))


def test_the_dcp_example_resumes_on_another_world_size(tmp_path) -> None:
    import subprocess

    example = Path(__file__).resolve().parents[1] / "examples" / "dcp_training.py"
    argv = [sys.executable, str(example), "--dir", str(tmp_path / "run"), "--steps", "8", "--save-every", "2", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["bit_identical"]
    assert summary["resumed"] == {"nproc": 1, "from_step": 4, "checkpoint": str(tmp_path / "run" / "ckpt-2")}
    assert [Path(u).name for u in summary["kept"]] == ["ckpt-3", "ckpt-4"]
    assert "model.0.weight" in summary["keys"]


def test_float8_and_sharded_chunks_in_one_process(tmp_path) -> None:
    """float8 (stored as its bits, typed in the manifest) and a tensor DCP hands over in several chunks."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import SavePlan

    class Split(DefaultSavePlanner):  # two row chunks of "w": what a sharded tensor's items look like
        def create_local_plan(self) -> SavePlan:
            import dataclasses

            from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
            from torch.distributed.checkpoint.planner import TensorWriteData, WriteItemType

            plan = super().create_local_plan()
            items = []
            for item in plan.items:
                if item.index.fqn != "w":
                    items.append(item)
                    continue
                for off, rows in ((0, 3), (3, 2)):
                    chunk = ChunkStorageMetadata(torch.Size([off, 0]), torch.Size([rows, 4]))
                    td = TensorWriteData(chunk, item.tensor_data.properties, item.tensor_data.size)
                    index = dataclasses.replace(item.index, offset=chunk.offsets)
                    items.append(dataclasses.replace(item, index=index, type=WriteItemType.SHARD, tensor_data=td))
            self.plan = dataclasses.replace(plan, items=items)
            return self.plan

        def resolve_data(self, write_item: Any) -> Any:
            if write_item.index.fqn == "w":
                o, n = int(write_item.tensor_data.chunk.offsets[0]), int(write_item.tensor_data.chunk.sizes[0])
                return self.state_dict["w"][o : o + n]
            return super().resolve_data(write_item)

    want = {"w": torch.arange(20.0).reshape(5, 4), "f8": torch.randn(6).to(torch.float8_e4m3fn)}
    url = str(tmp_path / "c")
    dcp.save(want, storage_writer=cloudckpt.dcp.Writer(url), planner=Split(), no_dist=True)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_bytes())
    assert manifest["dcp"]["items"]["w"]["chunks"] == [[[0, 0], [3, 4]], [[3, 0], [2, 4]]]
    assert_same(load(zeros_like(want), url), want)
    np.testing.assert_array_equal(cloudckpt.load(url)["w"], want["w"].numpy())
