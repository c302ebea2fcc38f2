"""orbax.checkpoint (JAX, on CPU): StandardCheckpointer, OCDBT + zarr3 via tensorstore."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from benchmarks.libs.base import Ctx, Lib, State


class Orbax(Lib):
    name = "orbax"
    label = "orbax"
    requires = ("orbax.checkpoint", "jax")
    targets = ("local", "s3", "s3-lat", "gcs", "s3-disk")
    has_async = True
    imports = ("jax", "orbax.checkpoint")
    note = "orbax.checkpoint.StandardCheckpointer (OCDBT + zarr3 via tensorstore) on numpy arrays, JAX CPU"

    def prepare(self, ctx: Ctx) -> None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax  # noqa: F401
        import orbax.checkpoint  # noqa: F401

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(os.path.abspath(ctx.url), "orbax") if ctx.local else ctx.url + "/orbax"

    def save(self, state: State, ctx: Ctx) -> None:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        ck.save(self._path(ctx), state)
        ck.wait_until_finished()
        ck.close()

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        import orbax.checkpoint as ocp

        return ocp.StandardCheckpointer()

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        ck = prepared
        ck.save(self._path(ctx), state)

        def wait() -> None:
            ck.wait_until_finished()
            ck.close()

        return wait

    def load(self, ctx: Ctx) -> State:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        out = ck.restore(self._path(ctx))
        ck.close()
        return dict(out)
