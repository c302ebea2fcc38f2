"""The libraries under test, each behind one small adapter.

Every adapter saves and loads a flat ``{name: array}`` state the way a user
of that library would. On local disk each save is made *durable*: libraries
that fsync their files themselves (cloudckpt, the raw baselines, torch DCP's
``FileSystemWriter(sync_files=True)``) are trusted; for every other library
the benchmark fsyncs each file and directory it wrote, inside the timed
region (``fsyncs_itself = False``), so that all rows pay for durability.

On fsspec targets (``memory://``, ``s3://``, ``gs://``) the single-file
formats (np.savez, safetensors, torch.save) serialize to bytes in memory and
upload one object with the same fsspec filesystem cloudckpt uses; loads fetch
the object and deserialize. That is what a user without a cloud-native
checkpoint library does.

One module per library or family: ``base`` (the interface), ``raw``, ``cloudckpt_lib``, ``single_file``,
``torch_peers``, ``orbax_lib``, ``zarr_naive``. None imports its library at module level: the child process
times those imports.
"""

from __future__ import annotations

from benchmarks.libs.base import Ctx, Lib, State, fsync_tree, make_fs
from benchmarks.libs.cloudckpt_lib import CloudCkpt
from benchmarks.libs.orbax_lib import Orbax
from benchmarks.libs.raw import RawSequential, RawThreads
from benchmarks.libs.single_file import NpSavez, Safetensors, TorchSave
from benchmarks.libs.torch_peers import TorchDCP, TorchSnapshot
from benchmarks.libs.zarr_naive import ZarrNaive

__all__ = ["ALL_LIBS", "BASELINES", "LIBS", "Ctx", "Lib", "State", "fsync_tree", "make_fs"]

ALL_LIBS: list[Lib] = [
    CloudCkpt(),
    RawSequential(),
    RawThreads(),
    NpSavez(),
    Safetensors(),
    TorchSave(),
    TorchDCP(),
    Orbax(),
    TorchSnapshot(),
    ZarrNaive(),
]
LIBS: dict[str, Lib] = {lib.name: lib for lib in ALL_LIBS}
BASELINES = ("raw", "raw-threads")
