"""zarr-python 3 used naively: one array per tensor with its default chunks and codecs."""

from __future__ import annotations

from typing import Any

from benchmarks.libs.base import Ctx, Lib, State


class ZarrNaive(Lib):
    name = "zarr-naive"
    label = "naive zarr"
    requires = ("zarr",)
    imports = ("zarr",)
    note = "zarr 3 defaults: open_group(mode='w') + create_array(data=...) per tensor (auto chunks, zstd); no fsync of its own"

    def prepare(self, ctx: Ctx) -> None:
        import zarr
        import zarr.storage  # noqa: F401

    def _store(self, ctx: Ctx, read_only: bool) -> Any:
        import zarr.storage

        if ctx.local:
            return zarr.storage.LocalStore(ctx.url, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(ctx.url, storage_options=ctx.storage_options or None, read_only=read_only)

    def save(self, state: State, ctx: Ctx) -> None:
        import warnings

        import zarr

        warnings.filterwarnings("ignore", category=UserWarning)
        g = zarr.open_group(self._store(ctx, False), mode="w")
        for k, v in state.items():
            g.create_array(k, data=v)

    def load(self, ctx: Ctx) -> State:
        import warnings

        import zarr

        warnings.filterwarnings("ignore", category=UserWarning)
        g = zarr.open_group(self._store(ctx, True), mode="r")
        return {k: a[...] for k, a in g.arrays()}
