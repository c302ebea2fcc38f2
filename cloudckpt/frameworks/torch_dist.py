"""torch.distributed support: ``DTensor`` leaves and FSDP2 state.

Imported (and registered) automatically once the program has imported
``torch.distributed.tensor`` (FSDP2 and ``DTensor`` users have); process
groups are in :mod:`cloudckpt.frameworks.torch_group`.

* A ``DTensor`` leaf is saved as a :class:`~cloudckpt.format.shards.ShardedArray`:
  its global shape and this rank's shard with its offset (``Shard`` and
  ``Replicate`` placements on any mesh, uneven shards included; ``Partial``
  is refused).
* Restoring into a ``DTensor`` reads only this rank's box of the stored
  array and copies it into the local shard, whatever mesh and world size
  saved it.
* An optimizer whose parameters are ``DTensor``s and that has no state yet
  (a fresh job) gets zero state first (one step with zero gradients and a
  learning rate of 0, as torch.distributed.checkpoint does), so that its
  state can be restored in place.

Example (one process, a 1-rank gloo group):
    >>> import os, tempfile, torch, torch.distributed as dist, numpy as np, cloudckpt
    >>> from cloudckpt.testing.launch import free_port
    >>> os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    >>> dist.init_process_group("gloo", rank=0, world_size=1)
    >>> from torch.distributed.tensor import distribute_tensor, Shard, init_device_mesh
    >>> mesh = init_device_mesh("cpu", (1,))
    >>> w = distribute_tensor(torch.arange(6.0).reshape(3, 2), mesh, [Shard(0)])
    >>> url = cloudckpt.save(tempfile.mkdtemp() + "/c", {"w": w})
    >>> cloudckpt.load(url)["w"]
    array([[0., 1.],
           [2., 3.],
           [4., 5.]], dtype=float32)
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor, Partial

from cloudckpt.format import adapters
from cloudckpt.format.shards import Box, ShardedArray
from cloudckpt.frameworks.torch import from_numpy
from cloudckpt.frameworks.torch import to_numpy as _plain_to_numpy

__all__ = ["dtensor_to_sharded", "wanted_boxes", "init_optimizer_state"]
def _is_dtensor(x: Any) -> bool:
    return isinstance(x, DTensor)


def dtensor_to_sharded(x: Any) -> ShardedArray | None:
    """A ``DTensor`` as a ShardedArray holding this rank's shard; None for anything else.

    Raises TypeError for ``Partial`` placements (reduce them first).
    """
    if not isinstance(x, DTensor):
        return None
    if any(isinstance(p, Partial) for p in x.placements):
        raise TypeError("a DTensor with a Partial placement holds unreduced values; call .redistribute() or .full_tensor() first")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = x.to_local().detach()
    shape, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    arr = _plain_to_numpy(local.contiguous() if not local.is_contiguous() else local)
    assert arr is not None
    if tuple(arr.shape) != tuple(shape):
        raise TypeError(f"a DTensor whose local shard has shape {tuple(arr.shape)}, not {tuple(shape)} as its placements say")
    return ShardedArray(tuple(x.shape), arr.dtype, [(tuple(offset), arr)])


def wanted_boxes(x: Any) -> list[Box] | None:
    """The box of the global array this rank's shard of the ``DTensor`` ``x`` holds; None for anything else."""
    if not isinstance(x, DTensor):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    return [(tuple(int(o) for o in offset), tuple(int(n) for n in shape))]


def _restore_dtensor(target: Any, value: Any) -> None:
    local = target.to_local()
    if isinstance(value, ShardedArray):
        if len(value.pieces) != 1 or tuple(value.pieces[0][1].shape) != tuple(local.shape):
            raise ValueError(f"cannot restore pieces {value.local_boxes()} into a DTensor shard of shape {tuple(local.shape)}")
        src = from_numpy(value.pieces[0][1])
    elif isinstance(value, np.ndarray):  # a whole array: take this rank's box
        (offset, shape), = wanted_boxes(target) or [((), ())]
        src = from_numpy(np.ascontiguousarray(value[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))]))
    else:
        raise TypeError(f"cannot restore a {type(value).__name__} into a DTensor")
    if src is None:
        raise TypeError(f"cannot restore dtype {getattr(value, 'dtype', '?')} into a DTensor")
    with torch.no_grad():
        local.copy_(src)


def _dtensor_describe(x: Any) -> tuple[tuple[int, ...], np.dtype | None] | None:
    if not isinstance(x, DTensor):
        return None
    from cloudckpt.frameworks.torch import numpy_dtype

    return tuple(x.shape), numpy_dtype(x.dtype)


def init_optimizer_state(optim: Any) -> bool:
    """Give a fresh optimizer its (zero) state so that a checkpoint can be
    restored into it in place: one ``step()`` with zero gradients and a
    learning rate of 0. Returns whether it did. Optimizers with state, or
    whose parameters have gradients already, are left alone.
    """
    if not isinstance(optim, torch.optim.Optimizer) or optim.state:
        return False
    params = [p for g in optim.param_groups for p in g["params"]]
    if not params or any(p.grad is not None for p in params):
        return False
    for p in params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    saved_lrs = []
    for g in optim.param_groups:
        saved_lrs.append(g.get("lr"))
        if "lr" in g:
            g["lr"] = torch.tensor(0.0) if isinstance(g["lr"], torch.Tensor) else 0.0
    try:
        optim.step()
    finally:
        for g, lr in zip(optim.param_groups, saved_lrs, strict=True):
            if lr is not None:
                g["lr"] = lr
        optim.zero_grad(set_to_none=True)
    return True


def _has_dtensor_params(obj: Any) -> bool:
    if isinstance(obj, torch.optim.Optimizer):
        return any(isinstance(p, DTensor) for g in obj.param_groups for p in g["params"])
    if isinstance(obj, torch.nn.Module):
        return any(isinstance(p, DTensor) for p in obj.parameters())
    return False


def _prepare(obj: Any) -> bool:
    """Whether ``obj``'s state must be restored in place (it holds DTensors);
    a fresh optimizer gets its zero state first."""
    if not _has_dtensor_params(obj):
        return False
    init_optimizer_state(obj)
    return True


adapters.register(
    dtensor_to_sharded,
    is_tensor=_is_dtensor,
    restore=_restore_dtensor,
    describe=_dtensor_describe,
    wanted_boxes=wanted_boxes,
    restore_in_place=_prepare,
    first=True,
)
