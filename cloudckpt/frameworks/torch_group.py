"""torch.distributed process groups as cloudckpt groups.

:func:`group_for` wraps a ``ProcessGroup`` (default: the world) as a
cloudckpt :class:`~cloudckpt.distributed.group.Group`. Its collectives run on a gloo
group of the same ranks, created for cloudckpt with its own timeout, so they
work beside NCCL, never interleave with the training's own collectives, and
raise instead of hanging when a rank is gone. Payloads are bytes in uint8
tensors (JSON; never torch's pickling object collectives).

Example:
    >>> group_for(None, 60.0)   # torch.distributed not initialized: one process
    SingleProcess()
"""

from __future__ import annotations

import datetime
import re
import threading
from typing import Any

import torch
import torch.distributed as dist

from cloudckpt.distributed.group import SINGLE, JsonCollectives, register_provider
from cloudckpt.errors import CheckpointError

__all__ = ["TorchGroup", "group_for"]

_GROUPS: dict[tuple[Any, float], TorchGroup] = {}
_LOCK = threading.Lock()


class TorchGroup(JsonCollectives):
    """A torch.distributed process group as a cloudckpt group (see the module docs)."""

    def __init__(self, pg: Any, timeout: float) -> None:
        self._parent = pg
        self.timeout = timeout
        self.rank = dist.get_rank(pg)
        self.size = dist.get_world_size(pg)
        ranks = dist.get_process_group_ranks(pg) if pg is not None else list(range(dist.get_world_size()))
        # every rank of the world must call new_group, members or not (torch's rule)
        self._pg = dist.new_group(ranks=ranks, backend="gloo", timeout=datetime.timedelta(seconds=timeout))

    def __repr__(self) -> str:
        return f"TorchGroup(rank={self.rank}, size={self.size}, timeout={self.timeout:g}s)"

    def _fail(self, what: str, exc: BaseException) -> CheckpointError:
        reason = str(exc).split(". This is typically")[0]
        reason = re.sub(r"^\[[^\]]*\] ", "", reason)  # gloo's source location
        return CheckpointError(
            f"rank {self.rank} of {self.size}: the collective '{what}' failed ({reason}); "
            f"another rank died, failed or did not answer within {self.timeout:g} s. Nothing was committed "
            "unless the caller says so; restart the job (it resumes from the latest committed checkpoint)"
        )

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's bytes, in rank order."""
        try:
            n = torch.tensor([len(data)], dtype=torch.int64)
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
            dist.all_gather(sizes, n, group=self._pg)
            longest = max(int(s.item()) for s in sizes)
            buf = torch.zeros(max(1, longest), dtype=torch.uint8)
            if data:
                buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            out = [torch.empty(max(1, longest), dtype=torch.uint8) for _ in range(self.size)]
            dist.all_gather(out, buf, group=self._pg)
        except (RuntimeError, ValueError, dist.DistBackendError) as exc:
            raise self._fail("all_gather", exc) from None
        return [bytes(o[: int(s.item())].numpy()) for o, s in zip(out, sizes, strict=True)]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """Rank ``src``'s bytes on every rank."""
        try:
            n = torch.tensor([len(data) if self.rank == src and data is not None else 0], dtype=torch.int64)
            global_src = dist.get_global_rank(self._pg, src) if self._pg is not None else src
            dist.broadcast(n, src=global_src, group=self._pg)
            size = int(n.item())
            buf = torch.zeros(max(1, size), dtype=torch.uint8)
            if self.rank == src and data:
                buf[:size] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            dist.broadcast(buf, src=global_src, group=self._pg)
        except (RuntimeError, ValueError, dist.DistBackendError) as exc:
            raise self._fail("broadcast", exc) from None
        return bytes(buf[:size].numpy())

    def fork(self) -> TorchGroup:
        """A second group of the same ranks (a collective: every rank calls it),
        for collectives that may run while another thread uses this one."""
        return TorchGroup(self._parent, self.timeout)

    def all_reduce_max(self, value: int) -> int:
        """The largest ``value`` over the ranks (one tiny collective)."""
        t = torch.tensor([value], dtype=torch.int64)
        try:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._pg)
        except (RuntimeError, ValueError, dist.DistBackendError) as exc:
            raise self._fail("all_reduce", exc) from None
        return int(t.item())


def group_for(process_group: Any, timeout: float) -> Any:
    """The cloudckpt group of ``process_group`` (None: the default group), or
    the single-process group when torch.distributed is not initialized.

    Created once per process group and timeout: creating it is a collective
    that every rank must reach, so the first save, restore or manager must be
    created by all ranks together.
    """
    if not dist.is_available() or not dist.is_initialized():
        if process_group is not None:
            raise ValueError("process_group was given, but torch.distributed is not initialized")
        return SINGLE
    if process_group is None and dist.get_world_size() == 1:
        return SINGLE
    key = (process_group, float(timeout))
    with _LOCK:
        group = _GROUPS.get(key)
        if group is None:
            group = TorchGroup(process_group, float(timeout))
            _GROUPS[key] = group
    return group


# resolve_group asks this module for torch.distributed's groups: every
# process_group that is not a cloudckpt group is taken for a torch one
register_provider("torch", group_for)
