"""Multi-host: real processes on 127.0.0.1 with the gloo backend (tests/scripts/multihost_worker.py).

- FSDP2 model + AdamW state saved on 4 ranks, restored bit-exactly on 4, 2 and
  1 ranks and in one plain process without torch.distributed, on local disk,
  S3 (moto) and GCS (fake-gcs-server);
- DTensors on 1-D and 2-D meshes (even, uneven and nested shardings), a
  replicated plain tensor and PerRank values, restored into other shardings;
- the structure must agree across ranks;
- a rank SIGKILLed at several points of a save: nothing is committed, the
  other ranks raise within seconds, the next run restores the previous latest
  and collects the orphaned data;
- retention, async save and preemption (SIGTERM to one rank) with several ranks;
- the crash-and-resume example.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="multi-host support is for torch.distributed")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import servers  # noqa: E402

import cloudckpt  # noqa: E402
from cloudckpt.testing.launch import RankResult, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "multihost_worker.py"
TIMEOUT = 30  # seconds a collective may wait for a rank (the group's timeout)


def run(scenario: str, url: str, nproc: int, args: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
        **kw: Any) -> list[RankResult]:  # fmt: skip
    env = {"CLOUDCKPT_COLLECTIVE_TIMEOUT": str(TIMEOUT), "CLOUDCKPT_TEST_STORAGE_OPTIONS": json.dumps(options)}
    argv = [sys.executable, str(WORKER), scenario, url, json.dumps(args or {})]
    return launch(argv, nproc, env=env, timeout=kw.pop("timeout", 240), **kw)


def result(r: RankResult) -> dict[str, Any]:
    """The last JSON line a rank printed."""
    for line in reversed(r.lines):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError(f"rank {r.rank} exited {r.returncode} without a result:\n{r.stderr[-3000:]}")


def ok(results: list[RankResult]) -> list[dict[str, Any]]:
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return [result(r) for r in results]


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def location(request, tmp_path) -> tuple[str, dict[str, Any] | None]:
    """A fresh directory URL and its storage options."""
    if request.param == "local":
        return str(tmp_path / "run"), None
    name = f"mh-{os.urandom(4).hex()}"
    if request.param == "s3":
        srv = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/{name}", servers.s3_storage_options(srv.endpoint_url)
    if request.param == "azure":
        srv = request.getfixturevalue("azure_server")
        container = request.getfixturevalue("azure_container")
        return f"az://{container}/{name}", servers.azure_storage_options(srv.endpoint_url)
    srv = request.getfixturevalue("gcs_server")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/{name}", servers.gcs_storage_options(srv.endpoint_url)


def test_fsdp2_saved_on_4_ranks_restores_bit_exactly_on_4_2_and_1(location, tmp_path) -> None:
    """On local disk: restored on 4, 2 and 1 ranks and in one plain process; on
    the object stores (slower to start 4 more processes for): on 2 ranks."""
    url, options = location
    ref = str(tmp_path / "ref.npz")
    saved = ok(run("fsdp-save", url, 4, {"ref": ref}, options))
    assert {s["url"] for s in saved} == {f"{url}/ckpt-2"}
    assert all(s["checkpoints"] == [f"{url}/ckpt-2"] for s in saved)  # every rank knows the commit
    # small shards (all of this model) are gathered and packed, not one object per shard:
    # the root and pack zarr.json, the pack, the arrays of the 4 PerRank values and their groups
    info = cloudckpt.info(f"{url}/ckpt-2", storage_options=options)
    assert info.objects <= 16 and {leaf["stored_as"] for leaf in info.leaves} == {"packed", "array"}
    for nproc in (4, 2, 1) if options is None else (2,):
        restored = ok(run("fsdp-restore", url, nproc, {"ref": ref}, options))
        for r in restored:
            assert r["url"] == f"{url}/ckpt-2"
            assert r["bad"] == [], f"{nproc} ranks: these tensors differ from the saved ones: {r['bad']}"
            assert r["n"] == 24 and r["step"] == 2  # 6 parameters, 3 AdamW tensors each
            assert r["rng"] == [r["rank"]]  # each rank its own PerRank value
    if options is not None:
        return
    # one plain process, no torch.distributed, no FSDP: whole tensors
    env = {**os.environ, "CLOUDCKPT_TEST_STORAGE_OPTIONS": json.dumps(options)}
    plain = subprocess.run([sys.executable, str(WORKER), "plain-restore", url, json.dumps({"ref": ref})],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    got = json.loads(plain.stdout.strip().splitlines()[-1])
    assert got["bad"] == [] and got["step"] == 2 and got["rng"] == [0]


@pytest.mark.parametrize("nproc", [1, 2, 4])
def test_dtensors_replicated_and_per_rank_values_reshard(nproc: int, tmp_path) -> None:
    url = str(tmp_path / "c")
    saved = ok(run("mixed-save", url, nproc, {"chunk": 4096}))
    # the replicated plain tensor and the shards are spread: no rank writes everything
    writes = [s["writes"] for s in saved]
    if nproc > 1:
        assert max(writes) < sum(writes) * 0.6, writes
    restored = ok(run("mixed-restore", url, nproc))
    for r in restored:
        assert r["bad"] == [] and r["step"] == 5 and r["rng"] == [r["rank"], 7 * r["rank"]]
    # fewer ranks: the PerRank values of the ranks that exist, resharded tensors
    if nproc == 4:
        for r in ok(run("mixed-restore", url, 2)):
            assert r["bad"] == [] and r["rng"] == [r["rank"], 7 * r["rank"]]
    # one plain process: every array whole, zarr-python reads them too
    state = cloudckpt.load(url)
    assert state["a"].shape == (10, 6) and np.array_equal(state["a"], np.arange(60, dtype=np.float32).reshape(10, 6))
    assert np.array_equal(state["c"], np.arange(30, dtype=np.int32).reshape(10, 3))
    assert state["rng"] == cloudckpt.PerRank(np.array([0, 0]))
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(cloudckpt.info(url).data_url, mode="r")
    assert np.array_equal(group["b"][:], np.arange(63, dtype=np.float64).reshape(9, 7) / 7)
    manifest = json.loads(Path(url, "manifest.json").read_text())
    assert manifest["format_version"] == 3
    per_rank = [n for n in manifest["tree"]["v"] if n["t"] == "per_rank"]
    assert len(per_rank) == 1 and len(per_rank[0]["r"]) == nproc


def test_ranks_with_different_structures_all_raise(tmp_path) -> None:
    results = run("mismatch", str(tmp_path / "c"), 2)
    for r in results:
        assert r.returncode == 3, r.stderr[-2000:]
        assert "rank 1" in result(r)["message"] and "PerRank" in result(r)["message"]
    assert not Path(tmp_path / "c" / "manifest.json").exists()


KILL_POINTS = {  # on 3 ranks
    "rank 2 before its first write": {"rank": 2, "after": 1},
    "rank 1 mid-data": {"rank": 1, "after": 3},
    "rank 0 at the manifest": {"rank": 0, "after": 1, "match": "manifest.json"},
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_rank_killed_during_a_save_commits_nothing_and_the_others_raise(point: str, tmp_path) -> None:
    url = str(tmp_path / "run")
    args = KILL_POINTS[point]
    t0 = time.monotonic()
    results = run("kill", url, 3, args)
    victim = results[args["rank"]]
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]
    for r in results:
        if r is victim:
            continue
        assert r.returncode == 3, f"rank {r.rank}: {r.returncode} {r.lines} {r.stderr[-2000:]}"
        assert result(r)["error"] == "CheckpointError"
        assert r.ended - victim.ended < TIMEOUT + 10  # raised, did not hang
    assert time.monotonic() - t0 < 200
    assert not Path(url, "ckpt-2", "manifest.json").exists()
    resumed = ok(run("resume", url, 3))
    for r in resumed:
        assert r["url"] == f"{url}/ckpt-1" and r["step"] == 1 and r["w"] == 1.0
        assert r["checkpoints"] == [f"{url}/ckpt-1"]
    assert not list(Path(url).glob("ckpt-2/data-*"))  # the orphaned data is collected


def test_rank_killed_on_s3_commits_nothing(s3_server, s3_bucket) -> None:
    url = f"s3://{s3_bucket}/mh-kill-{os.urandom(4).hex()}"
    options = servers.s3_storage_options(s3_server.endpoint_url)
    results = run("kill", url, 2, {"rank": 1, "after": 2}, options)
    assert results[1].returncode == -signal.SIGKILL
    assert results[0].returncode == 3 and result(results[0])["error"] == "CheckpointError"
    for r in ok(run("resume", url, 2, options=options)):
        assert r["url"] == f"{url}/ckpt-1" and r["step"] == 1


def test_retention_with_several_ranks(location) -> None:
    url, options = location
    out = ok(run("retention", url, 2, options=options))
    want = [f"{url}/ckpt-4", f"{url}/ckpt-5"]
    for r in out:
        assert r["urls"] == [f"{url}/ckpt-{n}" for n in range(1, 6)]
        assert r["checkpoints"] == want and r["latest"] == want[-1] and r["counter"] == 5
    assert cloudckpt.latest_checkpoint(url, storage_options=options) == want[-1]
    state = cloudckpt.load(want[-1], storage_options=options)
    assert float(state["w"].mean()) == 5.0 and state["step"] == 5
    if options is None:
        assert sorted(p.name for p in Path(url).glob("ckpt-*")) == ["ckpt-4", "ckpt-5"]
        assert "ckpt-5" in Path(url, "checkpoint").read_text()


def test_async_save_with_several_ranks(tmp_path) -> None:
    url = str(tmp_path / "run")
    for r in ok(run("async", url, 2)):
        assert r["latest"] == f"{url}/ckpt-3" and r["checkpoints"] == [f"{url}/ckpt-2", f"{url}/ckpt-3"]
    state = cloudckpt.load(f"{url}/ckpt-3")
    assert float(state["w"].mean()) == 3.0  # the copy taken in save(), not the -1 written after


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigterm_to_one_rank_saves_the_same_step_on_all(async_save: bool, tmp_path) -> None:
    url = str(tmp_path / "run")
    sent: list[int] = []

    def watch(rank: int, line: str, procs: list[Any]) -> None:
        if rank == 1 and not sent and line.startswith("{") and json.loads(line).get("step") == 6:
            sent.append(6)
            procs[1].send_signal(signal.SIGTERM)

    results = run("preempt", url, 2, {"steps": 40, "async": async_save}, on_line=watch)
    assert [r.returncode for r in results] == [143, 143], [r.stderr[-1500:] for r in results]
    last_steps = {max(json.loads(x)["step"] for x in r.lines if '"step"' in x) for r in results}
    assert len(last_steps) == 1  # every rank stopped at the same step
    (step,) = last_steps
    assert step >= 6
    assert cloudckpt.latest_checkpoint(url) == f"{url}/ckpt-{step}"
    resumed = ok(run("preempt", url, 2, {"steps": step + 2, "async": async_save}))
    assert all(r["done"] == step + 2 for r in resumed)


def test_multihost_example_resumes_exactly(tmp_path) -> None:
    argv = [sys.executable, str(ROOT / "examples" / "torch_multihost_training.py"), "--demo", "--json",
            "--nproc", "2", "--steps", "10", "--kill-after", "4", "--save-every", "3", "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["identical"] and summary["exit_codes"] == [[143, 143], [0, 0]]
    assert summary["restored_in_one_process"]["0.weight"] == [96, 24]
