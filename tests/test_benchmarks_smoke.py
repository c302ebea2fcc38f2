"""The benchmark suites still run, each with ``--smoke``. No speed assertion: they
check that every measurement ran and that every load returned what was saved.

* ``python -m benchmarks.run --smoke``: tiny scale, cloudckpt + raw baseline,
  local + memory + s3 when moto is installed. ~45-90 s on 2 cores. Every load
  is a new process's first load: on local disk a cold one (the checkpoint
  evicted from the page cache, and that checked: 0 resident pages, or the load
  is recorded as ``not-cold`` with the reason) and a warm one; on S3 a new
  process with a new client; plus the time to the first committed checkpoint
  of a new process on local disk and S3.
* ``python -m benchmarks.multihost --smoke``: a tiny FSDP2 model + AdamW state,
  1 and 2 gloo ranks, local disk, 1 rep, cloudckpt and torch DCP, plus
  cloudckpt's resharding loads 1 -> 2 and 2 -> 1; every load restored
  bit-exactly the state that was saved (``verified``). ~60-90 s on 2 cores.
"""

from __future__ import annotations

import json
import os
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

    targets = {r["target"] for r in records} - {"memory"}
    for lib in ("cloudckpt", "raw-threads"):
        for t in targets:
            mine = [r for r in records if r["lib"] == lib and r["target"] == t]
            if not mine:
                continue
            # every load outside memory:// is a new process's first load, imports timed
            loads = [r for r in mine if r["phase"] == "load"]
            assert loads, (lib, t)
            for r in loads:
                assert r["fresh"] is True and 0 < r["import_s"] < r["first_load_s"], r
                assert r["startup_s"] > 0 and r["load_s"] > 0, r
                assert r["first_load_s"] >= r["startup_s"] + r["import_s"] + r["load_s"] - 1e-6, r
            # the time to the first committed checkpoint of a new process
            firsts = [r for r in mine if r["phase"] == "first-save"]
            assert firsts and all(r["ttfc_s"] >= r["startup_s"] + r["import_s"] + r["save_s"] - 1e-6 for r in firsts)
            if t != "local":
                assert {r["cache"] for r in loads} == {"fresh-client"}, (lib, t)
                continue
            assert {r["cache"] for r in loads} & {"warm", "not-warm"}, (lib, t)
            cold = [r for r in loads if r["cache"] in ("cold", "not-cold")]
            assert cold, (lib, t)
            for r in cold:
                pc = r["page_cache"]
                assert pc["action"] == "evict" and pc["files"] > 0 and pc["pages"] > 0, r
                if r["cache"] == "cold":  # evicted, and that was checked: no page of the checkpoint resident
                    assert pc["ok"] is True and pc["resident"] == 0 and pc["tool"], pc
                    if pc["resident_fincore"] is not None:
                        assert pc["resident_fincore"] == 0, pc
                else:  # could not evict: said so, and kept out of the cold figures
                    assert pc["ok"] is False and r["cache_error"], r
    assert "## First load of a new process: cold and warm" in text
    assert "## Time to the first committed checkpoint of a new process" in text
    assert "Cold first load of a new process" in text  # the computed headline names its figure


def test_pagecache_eviction_is_checked(tmp_path):
    """evict() drops a file's pages and counts them (0 resident), or says it could not: never a silent "cold"."""
    from benchmarks import pagecache

    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(os.urandom(3 << 20))
    (d / "sub" / "b.bin").write_bytes(b"x" * 100)
    (d / "empty").write_bytes(b"")
    warm = pagecache.warm(str(d))
    assert warm["files"] == 3 and warm["pages"] == (3 << 20) // pagecache.PAGE + 1
    assert warm["ok"] is True and warm["resident"] == warm["pages"], warm
    cold = pagecache.evict(str(d))
    assert cold["files"] == 3 and cold["tool"]
    if cold["ok"]:
        assert cold["resident"] == 0 and cold["resident_fincore"] in (0, None) and cold["error"] is None
    else:  # e.g. tmpfs: nothing to write back to, pages stay
        assert cold["resident"] > 0 and "still resident" in cold["error"]



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


@pytest.mark.slow
def test_benchmark_incremental_smoke(tmp_path):
    """``python -m benchmarks.incremental --smoke``: tiny finetune state on local disk and memory://; every
    incremental later save (frozen tensors as objects of their own) sent fewer bytes than the full one and copied
    the rest, none sent more, and every load returned the saved state bit-exactly (the script asserts that too)."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.incremental", "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out), "--markdown", str(tmp_path / "report.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke ok" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"local", "memory", "local split", "memory split"} <= set(doc["finetune"])
    for name in ("local split", "memory split"):
        inc, full = doc["finetune"][name]["series"]["incremental"][0], doc["finetune"][name]["series"]["full"][0]
        assert len(inc["saves"]) == len(full["saves"]) >= 4, name
        for s_inc, s_full in zip(inc["saves"][1:], full["saves"][1:], strict=True):
            assert 0 < s_inc["bytes_written"] < s_full["bytes_written"], (name, s_inc, s_full)
            assert s_inc["bytes_copied"] > 0 and s_full["bytes_copied"] == 0, (name, s_inc, s_full)
    assert doc["finetune"]["memory split"]["series"]["incremental"][0]["verified"] is True
    loads = doc["loads"]["local"] + doc["loads"]["local split"]
    assert {r["mode"] for r in loads} == {"incremental", "full"} and all(r["verified"] is True for r in loads)
    assert {v: c["copy"]["verified"] for v, c in doc["cp"].items()} == {"default": True, "split": True}
    assert "| target | measured | limit | met |" in (tmp_path / "report.md").read_text()
