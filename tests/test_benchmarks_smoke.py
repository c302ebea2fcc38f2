"""The benchmark suites still run, each with ``--smoke``. No speed assertion: they
check that every measurement ran and that every load returned what was saved.

* ``python -m benchmarks.run --smoke``: tiny scale, cloudckpt + raw baseline,
  local + memory + s3 when moto is installed. ~30-60 s on 2 cores.
* ``python -m benchmarks.multihost --smoke``: a tiny FSDP2 model + AdamW state,
  1 and 2 gloo ranks, local disk, 1 rep, cloudckpt and torch DCP, plus
  cloudckpt's resharding loads 1 -> 2 and 2 -> 1; every load restored
  bit-exactly the state that was saved (``verified``). ~60-90 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _smoke(module: str, tmp_path: Path) -> tuple[list[dict[str, Any]], str]:
    """Run ``python -m <module> --smoke``; its records (none failed) and its markdown report."""
    out = tmp_path / "results.json"
    md = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out), "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke ok" in proc.stdout
    records = json.loads(out.read_text())["records"]
    assert records and not [r for r in records if r.get("error")]
    return records, md.read_text()


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    records, text = _smoke("benchmarks.run", tmp_path)
    assert {r["workload"] for r in records} == {"small-many", "large-few", "llm-like"}
    assert {"local", "memory"} <= {r["target"] for r in records}
    assert "| **cloudckpt** |" in text and "Versions:" in text


@pytest.mark.slow
def test_benchmark_multihost_smoke(tmp_path):
    pytest.importorskip("torch", reason="the multi-host benchmark runs torch.distributed ranks")
    records, text = _smoke("benchmarks.multihost", tmp_path)
    for lib in ("cloudckpt", "dcp"):
        mine = [r for r in records if r["lib"] == lib]
        assert {(r["phase"], r["save_world"], r["world"]) for r in mine} >= {
            ("save", 1, 1), ("save", 2, 2), ("load", 1, 1), ("load", 2, 2)}, lib
        loads = [r for r in mine if r["phase"] in ("load", "reshard")]
        assert loads and all(r["verified"] is True for r in loads), lib
        assert all(r["seconds"] > 0 and len(r["ranks"]) == r["world"] for r in mine), lib
    resharded = {(r["save_world"], r["world"]) for r in records if r["lib"] == "cloudckpt" and r["phase"] == "reshard"}
    assert resharded == {(1, 2), (2, 1)}
    assert "| ranks | save cloudckpt | save DCP |" in text and "Versions:" in text
