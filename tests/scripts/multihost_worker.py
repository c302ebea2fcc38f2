"""One rank of the multi-host tests (tests/test_multihost.py), run by cloudckpt.testing.launch.

    python multihost_worker.py SCENARIO URL [JSON_ARGS]

Environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (set by the launcher);
CLOUDCKPT_TEST_STORAGE_OPTIONS (JSON, for s3:// and gs:// URLs);
CLOUDCKPT_COLLECTIVE_TIMEOUT (seconds). Every rank prints JSON lines; the
last one is its result. Exit status 0 on success, 3 when the scenario
expects (and got) an error, which the line reports.

torch is imported when the worker runs, not when this file is imported:
pytest (``--doctest-modules``) imports every file under tests/, also
without torch (tests/test_imports.py checks that).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np

import cloudckpt
from cloudckpt.storage import add_global_hook
from cloudckpt.testing.faults import FaultInjector

SCENARIO, URL = "", ""  # set from the command line below
ARGS: dict[str, Any] = {}
OPTS: dict[str, Any] | None = None


def emit(**kw: Any) -> None:
    print(json.dumps({"rank": RANK, **kw}), flush=True)


def model_and_optimizer(seed: int, fsdp: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small MLP whose dimensions do not divide by the world size (uneven shards)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.GELU(), torch.nn.Linear(13, 6), torch.nn.GELU(), torch.nn.Linear(6, 3))
    if fsdp:
        for m in model:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for i in range(steps):
        g = torch.Generator().manual_seed(100 + i)
        x = torch.randn(8, 7, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Every tensor of the model and optimizer state, whole (collective for DTensors)."""

    def whole(v: torch.Tensor) -> np.ndarray:
        return (v.full_tensor() if isinstance(v, DTensor) else v).detach().numpy().copy()

    out = {f"model.{k}": whole(v) for k, v in model.state_dict().items()}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = whole(v)
    return out


def compare(ref_path: str, got: dict[str, np.ndarray]) -> list[str]:
    ref = np.load(ref_path)
    bad = [k for k in ref.files if k not in got or got[k].dtype != ref[k].dtype or not np.array_equal(got[k], ref[k])]
    return bad + [k for k in got if k not in ref.files]


def global_arrays() -> dict[str, np.ndarray]:
    return {
        "a": np.arange(10 * 6, dtype=np.float32).reshape(10, 6),
        "b": np.arange(9 * 7, dtype=np.float64).reshape(9, 7) / 7,
        "c": np.arange(10 * 3, dtype=np.int32).reshape(10, 3),
        "r": np.arange(5, dtype=np.float32),
        "big": np.arange(64 * 1024, dtype=np.float32),
    }


def mixed_state(world: int, layout: str) -> dict[str, Any]:
    """DTensors on 1-D and 2-D meshes (regular, uneven and nested shardings),
    a Replicate DTensor, a plain replicated tensor and a PerRank value."""
    g = global_arrays()
    mesh1 = init_device_mesh("cpu", (world,))
    mesh2 = init_device_mesh("cpu", (2, world // 2)) if world % 2 == 0 and world >= 2 else mesh1
    two_d = mesh2.ndim == 2
    if layout == "save":
        pa, pb, pc = [Shard(0)], ([Shard(0), Shard(1)] if two_d else [Shard(1)]), ([Shard(0), Shard(0)] if two_d else [Shard(0)])
        mb = mc = mesh2
    else:  # a different sharding of the same arrays
        pa, pb, pc = [Shard(1)], [Shard(0)], [Shard(1)]
        mb = mc = mesh1
    return {
        "a": distribute_tensor(torch.from_numpy(g["a"]), mesh1, pa),
        "b": distribute_tensor(torch.from_numpy(g["b"]), mb, pb),
        "c": distribute_tensor(torch.from_numpy(g["c"]), mc, pc),
        "r": distribute_tensor(torch.from_numpy(g["r"]), mesh1, [Replicate()]),
        "big": torch.from_numpy(g["big"]),  # a plain tensor every rank holds: written once, spread
        "rng": cloudckpt.PerRank(np.array([RANK, 7 * RANK], dtype=np.int64)),
        "step": 5,
    }


def main() -> int:
    timeout = float(os.environ.get("CLOUDCKPT_COLLECTIVE_TIMEOUT", "60"))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    world = dist.get_world_size()
    try:
        return SCENARIOS[SCENARIO](world)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def fsdp_save(world: int) -> int:
    model, opt = model_and_optimizer(0)
    train(model, opt, 2)
    ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=2, rng=cloudckpt.PerRank(np.array([RANK])))
    manager = cloudckpt.CheckpointManager(ckpt, URL, max_to_keep=2, storage_options=OPTS)
    url = manager.save(checkpoint_number=2)
    ref = full_state(model, opt)
    if RANK == 0:
        np.savez(ARGS["ref"], **ref)
    emit(url=url, checkpoints=manager.checkpoints)
    return 0


def fsdp_restore(world: int) -> int:
    model, opt = model_and_optimizer(123)  # other initial values: all must be overwritten
    ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=0, rng=cloudckpt.PerRank(np.array([-1])))
    manager = cloudckpt.CheckpointManager(ckpt, URL, max_to_keep=2, storage_options=OPTS)
    url = manager.restore_or_initialize()
    got = full_state(model, opt)
    emit(url=url, bad=compare(ARGS["ref"], got), step=ckpt.step, rng=ckpt.rng.value.tolist(), n=len(got))
    return 0


def mixed_save(world: int) -> int:
    state = mixed_state(world, "save")
    written: dict[str, int] = {}

    def count(op: str, url: str) -> None:
        if op in ("write", "write_create"):
            written[op] = written.get(op, 0) + 1

    remove = add_global_hook(count)
    url = cloudckpt.save(URL, state, storage_options=OPTS, options=cloudckpt.StoreOptions(chunk_bytes=ARGS.get("chunk", 1 << 20), pack_threshold=ARGS.get("pack", 0)))
    remove()
    emit(url=url, writes=written.get("write", 0), commits=written.get("write_create", 0))
    return 0


def mixed_restore(world: int) -> int:
    target = mixed_state(world, "restore")
    for k in ("a", "b", "c", "r"):
        target[k].to_local().zero_()
    target["big"] = torch.zeros_like(target["big"])
    big = target["big"]
    out = cloudckpt.load(URL, storage_options=OPTS, target=target, process_group=dist.group.WORLD)
    g = global_arrays()
    bad = [k for k in ("a", "b", "c", "r") if not np.array_equal(out[k].full_tensor().numpy(), g[k])]
    if out["big"] is not big or not np.array_equal(big.numpy(), g["big"]):
        bad.append("big")
    emit(bad=bad, rng=out["rng"].value.tolist() if not out["rng"].is_missing else None, step=out["step"])
    return 0


def mismatch(world: int) -> int:
    state: dict[str, Any] = {"w": torch.ones(4)}
    if RANK == world - 1:
        state["extra"] = torch.zeros(2)
    try:
        cloudckpt.save(URL, state, storage_options=OPTS)
    except ValueError as exc:
        emit(error=type(exc).__name__, message=str(exc))
        return 3
    emit(error=None)
    return 0


def _manager(step: list[int], **kw: Any) -> tuple[cloudckpt.Checkpoint, cloudckpt.CheckpointManager]:
    w = torch.zeros(8, 5)
    ckpt = cloudckpt.Checkpoint(w=w, step=0, rng=cloudckpt.PerRank(np.zeros(2)))
    return ckpt, cloudckpt.CheckpointManager(ckpt, URL, storage_options=OPTS, **kw)


def kill(world: int) -> int:
    """Save ckpt-1, then die (rank ARGS['rank']) at a point of the save of ckpt-2."""
    ckpt, manager = _manager([0], max_to_keep=3)
    ckpt.w.fill_(1.0)
    ckpt.step = 1
    manager.save(checkpoint_number=1)
    if RANK == ARGS["rank"]:
        injector = FaultInjector(kill_after=ARGS["after"], ops=tuple(ARGS.get("ops", ("write", "write_create", "copy"))),
                                 match=ARGS.get("match"))  # fmt: skip
        add_global_hook(injector)
    ckpt.w.fill_(2.0)
    ckpt.step = 2
    t0 = time.monotonic()
    try:
        manager.save(checkpoint_number=2)
    except cloudckpt.CheckpointError as exc:
        emit(error=type(exc).__name__, message=str(exc)[:500], seconds=time.monotonic() - t0)
        os._exit(3)  # the group is broken: do not wait for collectives at exit
    emit(error=None, seconds=time.monotonic() - t0)
    os._exit(0)


def resume(world: int) -> int:
    ckpt, manager = _manager([0], max_to_keep=3)
    url = manager.restore_or_initialize()
    emit(url=url, step=ckpt.step, w=float(ckpt.w.mean()), checkpoints=manager.checkpoints, latest=manager.latest_checkpoint)
    return 0


def retention(world: int) -> int:
    ckpt, manager = _manager([0], max_to_keep=2)
    urls = []
    for s in range(1, 6):
        ckpt.w.fill_(float(s))
        ckpt.step = s
        urls.append(manager.save())
    emit(urls=urls, checkpoints=manager.checkpoints, latest=manager.latest_checkpoint, counter=ckpt.save_counter)
    return 0


def async_save(world: int) -> int:
    ckpt, manager = _manager([0], max_to_keep=2, async_save=True)
    for s in range(1, 4):
        ckpt.w.fill_(float(s))
        ckpt.step = s
        manager.save(checkpoint_number=s)
        ckpt.w.fill_(-1.0)  # changed right after save() returns: the checkpoint must not see it
    manager.sync()
    emit(latest=manager.latest_checkpoint, checkpoints=manager.checkpoints)
    return 0


def preempt(world: int) -> int:
    ckpt, manager = _manager([0], max_to_keep=2, async_save=bool(ARGS.get("async")))
    start = manager.restore_or_initialize()
    with cloudckpt.PreemptionCheckpointHandler(manager, grace_period=60) as handler:
        while ckpt.step < ARGS["steps"]:
            ckpt.step += 1
            ckpt.w.fill_(float(ckpt.step))
            emit(step=ckpt.step, resumed=start)
            if ckpt.step % 4 == 0:
                manager.save(checkpoint_number=ckpt.step)
            handler.check(ckpt.step)
            time.sleep(0.05)
    manager.sync()
    emit(done=ckpt.step, latest=manager.latest_checkpoint)
    return 0


SCENARIOS = {
    "fsdp-save": fsdp_save,
    "fsdp-restore": fsdp_restore,
    "mixed-save": mixed_save,
    "mixed-restore": mixed_restore,
    "mismatch": mismatch,
    "kill": kill,
    "resume": resume,
    "retention": retention,
    "async": async_save,
    "preempt": preempt,
}

RANK = int(os.environ.get("RANK", "0"))

if __name__ == "__main__":
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    SCENARIO, URL = sys.argv[1], sys.argv[2]
    ARGS = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    OPTS = json.loads(os.environ.get("CLOUDCKPT_TEST_STORAGE_OPTIONS") or "null")
    if SCENARIO == "plain-restore":  # one plain process: no torch.distributed, no FSDP
        RANK = 0
        model, opt = model_and_optimizer(123, fsdp=False)
        ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=0, rng=cloudckpt.PerRank(np.array([-1])))
        url = cloudckpt.latest_checkpoint(URL, storage_options=OPTS)
        ckpt.read(url, storage_options=OPTS)
        emit(url=url, bad=compare(ARGS["ref"], full_state(model, opt)), step=ckpt.step, rng=ckpt.rng.value.tolist())
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = main()  # every save has committed (or failed) and the process group is destroyed by now
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: torch's C++ threads at exit once aborted a rank whose work had all succeeded
    # ("terminate called without an active exception", exit -6) on a loaded machine
    os._exit(int(code or 0))
