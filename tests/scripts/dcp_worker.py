"""One rank of the DCP tests (tests/test_dcp.py), run by cloudckpt.testing.launch.

    python dcp_worker.py MODE URL

MODE: ``save`` (DTensors sharded over every rank, a replicated tensor, a
non-tensor value), ``load`` (into DTensors sharded over this job's ranks:
resharding by DCP), ``crash`` (save, then SIGKILL the coordinator at the
start of ``finish()``: before the commit), ``manager`` (three saves through
a manager of the job's group, max_to_keep=2). Environment: as under torchrun;
CLOUDCKPT_TEST_STORAGE_OPTIONS (JSON). The last line a rank prints is its
JSON result.

torch is imported when the worker runs, not when this file is imported
(pytest imports every file under tests/).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def expected() -> dict[str, Any]:
    """The global values every run agrees on (seeded)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    return {
        "even": torch.randn(8, 6, generator=g),
        "uneven": torch.randn(7, 3, generator=g).to(torch.float64),
        "half": torch.randn(5, 4, generator=g).to(torch.bfloat16),
        "replicated": torch.arange(10, dtype=torch.int32),
    }


def state(mesh: Any, zero: bool = False) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    want = expected()
    model = {}
    for k in ("even", "uneven", "half"):
        t = torch.zeros_like(want[k]) if zero else want[k]
        model[k] = distribute_tensor(t, mesh, [Shard(0)])
    model["replicated"] = torch.zeros_like(want["replicated"]) if zero else want["replicated"].clone()
    return {"model": model, "extra": {"step": 0 if zero else 42, "name": "" if zero else "run-a"}}


def main() -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    import cloudckpt
    import cloudckpt.dcp

    mode, url = sys.argv[1], sys.argv[2]
    opts = json.loads(os.environ.get("CLOUDCKPT_TEST_STORAGE_OPTIONS") or "null")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    out: dict[str, Any] = {"rank": rank, "world": world}
    if mode == "save":
        dcp.save(state(mesh), storage_writer=cloudckpt.dcp.Writer(url, storage_options=opts))
    elif mode == "load":
        target = state(mesh, zero=True)
        dcp.load(target, storage_reader=cloudckpt.dcp.Reader(url, storage_options=opts))
        want = expected()
        same = {}
        for k, v in target["model"].items():
            full = v.full_tensor() if hasattr(v, "full_tensor") else v
            same[k] = bool(torch.equal(full.view(torch.uint8) if full.dtype == torch.bfloat16 else full,
                                       want[k].view(torch.uint8) if want[k].dtype == torch.bfloat16 else want[k]))
            if hasattr(v, "to_local"):
                out.setdefault("local_rows", {})[k] = int(v.to_local().shape[0])
        out["same"] = same
        out["extra"] = target["extra"]
    elif mode == "crash":
        import signal

        class Dies(cloudckpt.dcp.Writer):
            def finish(self, metadata: Any, results: Any) -> None:
                print(json.dumps({"rank": rank, "finishing": True}), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        dcp.save(state(mesh), storage_writer=Dies(url, storage_options=opts))
    elif mode == "manager":
        m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), url, max_to_keep=2, storage_options=opts)
        w = cloudckpt.dcp.Writer(manager=m)
        for step in range(3):
            s = state(mesh)
            s["extra"]["step"] = step
            dcp.save(s, storage_writer=w)
        out["checkpoints"] = [c.rsplit("/", 1)[1] for c in m.checkpoints]
    print(json.dumps(out), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()  # its result is printed and the process group destroyed by now
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: torch's C++ threads at exit once aborted a rank whose work had all succeeded
    # ("terminate called without an active exception", exit -6), as in multihost_worker.py
    os._exit(0)
