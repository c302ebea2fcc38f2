"""Single-file formats: np.savez, safetensors, torch.save. On fsspec targets they serialize to bytes in memory
and upload one object with the filesystem cloudckpt uses; loads fetch the object and deserialize."""

from __future__ import annotations

import io
import os

import numpy as np

from benchmarks.libs.base import Ctx, Lib, State, to_torch


class _SingleFile(Lib):
    filename = "ckpt"

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(ctx.url, self.filename) if ctx.local else ctx.fspath(self.filename)

    def save(self, state: State, ctx: Ctx) -> None:
        if ctx.local:
            os.makedirs(ctx.url, exist_ok=True)
            self.save_file(state, self._path(ctx))
            return
        ctx.fs().pipe_file(self._path(ctx), self.to_bytes(state))

    def load(self, ctx: Ctx) -> State:
        if ctx.local:
            return self.load_file(self._path(ctx))
        return self.from_bytes(ctx.fs().cat_file(self._path(ctx)))

    def save_file(self, state: State, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes(state))

    def load_file(self, path: str) -> State:
        with open(path, "rb") as f:
            return self.from_bytes(f.read())

    def to_bytes(self, state: State) -> bytes:
        raise NotImplementedError

    def from_bytes(self, data: bytes) -> State:
        raise NotImplementedError


class NpSavez(_SingleFile):
    name = "npz"
    label = "np.savez"
    filename = "ckpt.npz"
    note = "np.savez (uncompressed zip of .npy); fsspec targets: BytesIO + one pipe_file"

    def save_file(self, state: State, path: str) -> None:
        np.savez(path, **state)

    def load_file(self, path: str) -> State:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def to_bytes(self, state: State) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **state)
        return buf.getvalue()

    def from_bytes(self, data: bytes) -> State:
        with np.load(io.BytesIO(data)) as z:
            return {k: z[k] for k in z.files}


class Safetensors(_SingleFile):
    name = "safetensors"
    label = "safetensors"
    requires = ("safetensors",)
    filename = "model.safetensors"
    imports = ("safetensors.numpy",)
    note = "safetensors.numpy save_file/load_file; fsspec targets: save() bytes + one pipe_file"

    def prepare(self, ctx: Ctx) -> None:
        import safetensors.numpy  # noqa: F401

    def save_file(self, state: State, path: str) -> None:
        from safetensors.numpy import save_file

        save_file(state, path)

    def load_file(self, path: str) -> State:
        from safetensors.numpy import load_file

        return load_file(path)

    def to_bytes(self, state: State) -> bytes:
        from safetensors.numpy import save

        return save(state)

    def from_bytes(self, data: bytes) -> State:
        from safetensors.numpy import load

        return load(data)


class TorchSave(_SingleFile):
    name = "torch.save"
    label = "torch.save"
    requires = ("torch",)
    filename = "ckpt.pt"
    imports = ("torch",)
    note = "torch.save / torch.load(weights_only=True); fsspec targets: BytesIO + one pipe_file"

    def prepare(self, ctx: Ctx) -> None:
        import torch  # noqa: F401

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return to_torch(state)

    def save_file(self, state: State, path: str) -> None:
        import torch

        torch.save(state, path)

    def load_file(self, path: str) -> State:
        import torch

        return torch.load(path, weights_only=True)

    def to_bytes(self, state: State) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def from_bytes(self, data: bytes) -> State:
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)
