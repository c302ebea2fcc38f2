"""The multi-host benchmark still runs: ``python -m benchmarks.multihost --smoke``
(a tiny FSDP2 model + AdamW state, 1 and 2 gloo ranks, local disk, 1 rep,
cloudckpt and torch DCP, plus cloudckpt's resharding loads 1 -> 2 and 2 -> 1).

No speed assertion: it checks that every measurement ran and that every load
restored bit-exactly the state that was saved (``verified``). ~60-90 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the multi-host benchmark runs torch.distributed ranks")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_multihost_smoke(tmp_path):
    out = tmp_path / "results_multihost.json"
    md = tmp_path / "benchmarks-multihost.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.multihost", "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out), "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke ok" in proc.stdout
    records = json.loads(out.read_text())["records"]
    assert records and not [r for r in records if r.get("error")]
    for lib in ("cloudckpt", "dcp"):
        mine = [r for r in records if r["lib"] == lib]
        assert {(r["phase"], r["save_world"], r["world"]) for r in mine} >= {
            ("save", 1, 1), ("save", 2, 2), ("load", 1, 1), ("load", 2, 2)}, lib
        loads = [r for r in mine if r["phase"] in ("load", "reshard")]
        assert loads and all(r["verified"] is True for r in loads), lib
        assert all(r["seconds"] > 0 and len(r["ranks"]) == r["world"] for r in mine), lib
    resharded = {(r["save_world"], r["world"]) for r in records if r["lib"] == "cloudckpt" and r["phase"] == "reshard"}
    assert resharded == {(1, 2), (2, 1)}
    text = md.read_text()
    assert "| ranks | save cloudckpt | save DCP |" in text and "Versions:" in text
