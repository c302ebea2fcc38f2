"""The static dtype table of zarr_meta agrees with zarr's own dtype classes."""

import numpy as np
import pytest

from cloudckpt.format.dtypes import is_native, storage_dtype
from cloudckpt.format.zarr_meta import STATIC_DTYPES, zarr_dtype_json


@pytest.mark.parametrize("dtype_str", sorted(STATIC_DTYPES))
def test_static_table_matches_zarr(dtype_str):
    assert list(STATIC_DTYPES[dtype_str]) == list(zarr_dtype_json(dtype_str))


def test_every_native_storage_dtype_is_in_the_table():
    for name in ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", ">f4", ">i8"]:
        dt = np.dtype(name)
        assert is_native(dt)
        assert storage_dtype(dt).str in STATIC_DTYPES, name


def test_a_save_does_not_import_zarr(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, cloudckpt\n"
        f"cloudckpt.save({str(tmp_path / 'c')!r}, {{'w': np.ones((64, 1024), 'f4'), 'b': np.ones(3, 'i8')}},"
        " options=cloudckpt.StoreOptions(pack_threshold=1024))\n"
        "print('zarr' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
