"""cloudckpt itself, through its public API: ``cloudckpt.save`` / ``cloudckpt.load`` of one checkpoint at the URL,
async with ``CheckpointManager``. Its client-side requests are counted with ``cloudckpt.storage.add_global_hook``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.libs.base import Ctx, Lib, State


class CloudCkpt(Lib):
    name = "cloudckpt"
    label = "cloudckpt"
    requires = ("cloudckpt",)
    fsyncs_itself = True
    has_async = True
    imports = ("cloudckpt",)
    note = "cloudckpt.save / cloudckpt.load; async: CheckpointManager(async_save=True)"

    def prepare(self, ctx: Ctx) -> None:
        # cloudckpt imports zarr lazily at its first save (its zarr metadata's dtypes: 0.5-2 s on
        # this machine); like every other library's imports, that is not part of the timing.
        import zarr.core.dtype  # noqa: F401

        import cloudckpt
        import cloudckpt.storage

        if not ctx.local:
            cloudckpt.storage.open_storage(ctx.url, ctx.storage_options or None)  # imports s3fs/gcsfs

    def save(self, state: State, ctx: Ctx) -> None:
        import cloudckpt

        with _requests_counted(ctx):
            cloudckpt.save(ctx.url, state, storage_options=ctx.storage_options or None)

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        import cloudckpt

        ckpt = cloudckpt.Checkpoint(state=state)
        return cloudckpt.CheckpointManager(ckpt, ctx.url, max_to_keep=2, async_save=True,
                                           storage_options=ctx.storage_options or None)

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        prepared.save()
        return prepared.sync

    def load(self, ctx: Ctx) -> State:
        import cloudckpt

        with _requests_counted(ctx):
            state: State = cloudckpt.load(ctx.url, storage_options=ctx.storage_options or None)
        return state


@contextlib.contextmanager
def _requests_counted(ctx: Ctx) -> Iterator[None]:
    """Count the requests cloudckpt's storage layer makes inside the block, by operation, into
    ``ctx.extra["client_requests"]`` (``{op: n, ..., "requests": total}``; the hook runs before every attempt)."""
    from cloudckpt.storage import add_global_hook

    by_op: dict[str, int] = {}
    lock = threading.Lock()

    def count(op: str, url: str) -> None:
        with lock:
            by_op[op] = by_op.get(op, 0) + 1

    remove = add_global_hook(count)
    try:
        yield
    finally:
        remove()
    ctx.extra["client_requests"] = {**by_op, "requests": sum(by_op.values())}
