"""The ``s3-disk`` benchmark target: S3 on s3rver, whose objects are files on local disk.

* the server (installed by npm into a cache on first use, needs Node.js and npm) answers what cloudckpt and the
  baselines send through s3fs: PUT, GET, ranged GET, HEAD, LIST, multipart upload, DELETE, and stores every object
  as a file under its data directory; it does not honour ``If-None-Match: *`` (a create-only PUT of an existing
  key replaces it): docs/benchmarks.md says so, and this test fails the day that changes;
* ``benchmarks.run --target s3-disk`` measures cold loads with the server's files of the checkpoint evicted from
  the page cache (0 resident pages, checked) and warm loads with all of them resident, and counts the requests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_MISSING = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"the s3-disk target needs Node.js and npm ({', '.join(_MISSING)} not found on PATH)"
)


def test_s3rver_stores_objects_on_disk_and_ignores_if_none_match(tmp_path):
    import s3fs

    sys.path.insert(0, str(ROOT))
    from benchmarks.s3disk import KEY, SECRET, S3rverProcess

    srv = S3rverProcess("bkt", base=str(tmp_path))
    try:
        fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=srv.endpoint_url, skip_instance_cache=True)
        fs.pipe_file("bkt/ck/a", b"hello world")
        assert fs.cat_file("bkt/ck/a") == b"hello world"
        assert fs.cat_file("bkt/ck/a", start=2, end=5) == b"llo"
        assert fs.info("bkt/ck/a")["size"] == 11
        big = bytes(range(256)) * (24 << 12)  # 24 MiB: three 8 MiB parts
        with fs.open("bkt/ck/big", "wb", block_size=8 << 20) as f:
            f.write(big)
        assert fs.cat_file("bkt/ck/big") == big
        assert sorted(fs.find("bkt/ck")) == ["bkt/ck/a", "bkt/ck/big"]
        assert (srv.key_path("ck") / "big._S3rver_object").stat().st_size == len(big)  # on disk, in full

        fs.pipe_file("bkt/ck/m", b"first", mode="create")
        fs.pipe_file("bkt/ck/m", b"second", mode="create")  # S3 answers 412; s3rver 3.7.1 overwrites
        assert fs.cat_file("bkt/ck/m") == b"second"

        fs.rm("bkt/ck/a")
        assert not fs.exists("bkt/ck/a") and not (srv.key_path("ck") / "a._S3rver_object").exists()
        srv.remove("ck")
        assert fs.find("bkt/ck", refresh=True) == []
    finally:
        srv.stop()
    assert not Path(srv.tmpdir).exists()


@pytest.mark.slow
def test_benchmark_on_s3_disk_cold_and_warm(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--workload", "large-few", "--scale", "0.01", "--target", "s3-disk",
         "--reps", "1", "--peers", "none", "--baselines", "raw", "--no-async", "--no-first-save",
         "--workdir", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert not [r for r in records if r.get("error")], records
    assert {r["lib"] for r in records} == {"cloudckpt", "raw"}
    for lib in ("cloudckpt", "raw"):
        save = next(r for r in records if r["lib"] == lib and r["phase"] == "save")
        assert save["objects"] >= 2 and save["stored_bytes"] >= save["nbytes"]  # cloudckpt packs small tensors
        assert save["requests"]["PUT"] >= save["objects"], save["requests"]
        loads = {r["cache"]: r for r in records if r["lib"] == lib and r["phase"] == "load"}
        assert set(loads) == {"cold", "warm"}, loads.keys()
        for cache, r in loads.items():
            pc = r["page_cache"]
            assert pc["ok"] is True and pc["files"] >= save["objects"] and pc["bytes"] >= save["nbytes"], pc
            assert pc["resident"] == (0 if cache == "cold" else pc["pages"]), pc
            assert r["requests"]["GET"] >= 2 and "PUT" not in r["requests"], r["requests"]
    assert not list((tmp_path / "work").glob("cloudckpt-s3rver-*")), "the server's data dir was left behind"
