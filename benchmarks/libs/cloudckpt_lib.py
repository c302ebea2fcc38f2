"""cloudckpt itself: one checkpoint per save at the URL; async with ``CheckpointManager``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.libs.base import Ctx, Lib, State


class CloudCkpt(Lib):
    name = "cloudckpt"
    label = "cloudckpt"
    requires = ("cloudckpt",)
    fsyncs_itself = True
    has_async = True
    imports = ("cloudckpt",)
    note = "cloudckpt.layout.checkpoint_io.write_checkpoint/read_state (= cloudckpt.save/load); async: CheckpointManager(async_save=True)"

    def prepare(self, ctx: Ctx) -> None:
        # cloudckpt imports zarr lazily at its first save (zarr_meta._dtype_json: 0.5-2 s on
        # this machine); like every other library's imports, that is not part of the timing.
        import zarr.core.dtype  # noqa: F401

        import cloudckpt
        import cloudckpt.layout.checkpoint_io
        import cloudckpt.storage

        if not ctx.local:
            cloudckpt.storage.open_storage(ctx.url, ctx.storage_options or None)  # imports s3fs/gcsfs

    def save(self, state: State, ctx: Ctx) -> None:
        from cloudckpt.layout.checkpoint_io import write_checkpoint
        from cloudckpt.storage import open_storage

        storage = open_storage(ctx.url, ctx.storage_options or None)
        write_checkpoint(storage, state)
        ctx.extra["client_requests"] = storage.stats.snapshot()

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        import cloudckpt

        ckpt = cloudckpt.Checkpoint(state=state)
        return cloudckpt.CheckpointManager(ckpt, ctx.url, max_to_keep=2, async_save=True,
                                           storage_options=ctx.storage_options or None)

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        prepared.save()
        return prepared.sync

    def load(self, ctx: Ctx) -> State:
        from cloudckpt.layout.checkpoint_io import read_manifest, read_state
        from cloudckpt.storage import open_storage

        storage = open_storage(ctx.url, ctx.storage_options or None)
        state = read_state(storage, read_manifest(storage))
        ctx.extra["client_requests"] = storage.stats.snapshot()
        return state
