"""The torch-based sharded peers: torch.distributed.checkpoint (DCP) and torchsnapshot, in one process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.libs.base import Ctx, Lib, State, to_torch, torch_empty


class TorchDCP(Lib):
    name = "dcp"
    label = "torch DCP"
    requires = ("torch",)
    fsyncs_itself = True
    has_async = True
    imports = ("torch", "torch.distributed.checkpoint")
    note = ("torch.distributed.checkpoint, single process: FileSystemWriter(sync_files=True, thread_count=1, defaults) "
            "on local disk, FsspecWriter on fsspec URLs; load into pre-allocated tensors; async: dcp.async_save")

    def prepare(self, ctx: Ctx) -> None:
        import warnings

        import torch.distributed.checkpoint

        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        if not ctx.local:
            import torch.distributed.checkpoint._fsspec_filesystem  # noqa: F401

    def user_import(self) -> None:
        import warnings

        super().user_import()
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return to_torch(state)

    def _writer(self, ctx: Ctx) -> Any:
        import torch.distributed.checkpoint as dcp

        if ctx.local:
            return dcp.FileSystemWriter(ctx.url)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(ctx.url, **ctx.storage_options)

    def save(self, state: State, ctx: Ctx) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(state, storage_writer=self._writer(ctx))

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        return self._writer(ctx)

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        import torch.distributed.checkpoint as dcp

        fut = dcp.async_save(state, storage_writer=prepared)
        return lambda: fut.result()

    def load(self, ctx: Ctx) -> State:
        import torch.distributed.checkpoint as dcp

        out = torch_empty(ctx.spec)
        if ctx.local:
            reader = dcp.FileSystemReader(ctx.url)
        else:
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

            reader = FsspecReader(ctx.url, **ctx.storage_options)
        dcp.load(out, storage_reader=reader)
        return out


class TorchSnapshot(Lib):
    name = "torchsnapshot"
    label = "torchsnapshot"
    requires = ("torchsnapshot", "torch")
    targets = ("local", "s3", "s3-lat", "gcs", "s3-disk")
    has_async = True
    imports = ("torch", "torchsnapshot")
    note = "torchsnapshot.Snapshot.take/restore (StateDict app state; S3 via its aiobotocore plugin + AWS_ENDPOINT_URL)"

    def prepare(self, ctx: Ctx) -> None:
        import torchsnapshot  # noqa: F401

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return to_torch(state)

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(ctx.url, "snap") if ctx.local else ctx.url + "/snap"

    def save(self, state: State, ctx: Ctx) -> None:
        import torchsnapshot

        torchsnapshot.Snapshot.take(path=self._path(ctx), app_state={"s": torchsnapshot.StateDict(**state)})

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        import torchsnapshot

        pending = torchsnapshot.Snapshot.async_take(path=self._path(ctx), app_state={"s": torchsnapshot.StateDict(**state)})
        return lambda: pending.wait()

    def load(self, ctx: Ctx) -> State:
        import torchsnapshot

        out = torchsnapshot.StateDict(**torch_empty(ctx.spec))
        torchsnapshot.Snapshot(path=self._path(ctx)).restore(app_state={"s": out})
        return dict(out)
