"""The benchmark suite still runs: ``python -m benchmarks.run --smoke`` (tiny scale,
cloudckpt + raw baseline, local + memory + s3 when moto is installed).

No speed assertion: it only checks that every measurement ran and that every
load returned the bytes that were saved. Takes ~30-60 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "results.json"
    md = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out), "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke ok" in proc.stdout
    records = json.loads(out.read_text())["records"]
    assert records and not [r for r in records if r.get("error")]
    assert {r["workload"] for r in records} == {"small-many", "large-few", "llm-like"}
    assert {"local", "memory"} <= {r["target"] for r in records}
    text = md.read_text()
    assert "| **cloudckpt** |" in text and "Versions:" in text
