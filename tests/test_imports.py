"""What importing cloudckpt, and its first save and load, import.

- Without any framework, the whole test suite collects: a fresh Python whose
  ``sys.meta_path`` refuses torch, jax, jaxlib, optax, flax, lightning,
  pytorch_lightning and transformers runs ``pytest --collect-only`` (with the
  project's ``--doctest-modules``) and every ``.py`` under ``cloudckpt/`` and
  ``tests/`` is either imported or skipped with a reason naming its
  framework. A top-level ``import torch`` in a test helper fails this test.
- ``import cloudckpt`` and a first local save and load of a float32 state
  (``cloudckpt.save``/``load`` and a ``CheckpointManager``) import no
  ml_dtypes, zarr, fsspec, cloud SDK, framework, click or tqdm; ml_dtypes is
  imported when a checkpoint holds a bfloat16 array.
- A first S3 save imports no GCS, zarr, ml_dtypes or CLI module, and a
  process creates one S3 client for any number of saves and loads.

Every check runs in a fresh interpreter (``sys.modules`` of this one holds
whatever other tests imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import servers

import cloudckpt

ROOT = Path(__file__).resolve().parent.parent

FRAMEWORKS = ("torch", "jax", "jaxlib", "optax", "flax", "lightning", "pytorch_lightning", "transformers")

# Installed in a fresh interpreter before anything else: importing a framework raises ImportError.
BLOCKER = f"""
import sys

class _NoFrameworks:
    blocked = {FRAMEWORKS!r}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by tests/test_imports.py)", name=name)
        return None

sys.meta_path.insert(0, _NoFrameworks())
"""

# pytest in the blocked interpreter; prints what it imported and what it skipped, as JSON.
COLLECT = BLOCKER + textwrap.dedent("""
    import json
    import pytest

    class Record:
        def __init__(self):
            self.reports = []

        def pytest_collectreport(self, report):
            reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.reports.append({"nodeid": report.nodeid, "outcome": report.outcome, "reason": reason})

    record = Record()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[record])
    files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})
    blocked = sorted(m for m in sys.modules if m.partition(".")[0] in _NoFrameworks.blocked)
    print("@@" + json.dumps({"rc": int(rc), "reports": record.reports, "files": files, "blocked": blocked}))
""")

# Imported by a first save or load only when a checkpoint needs it (seconds of import in all).
NOT_ON_LOCAL_PATH = (
    "ml_dtypes", "zarr", "fsspec", "s3fs", "gcsfs", "aiobotocore", "botocore", "aiohttp",
    "torch", "jax", "click", "tqdm",
)  # fmt: skip


def _python(code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter in the repository root; the JSON it prints after ``@@``."""
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    assert out.returncode == 0 and lines, f"exit {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    result: dict = json.loads(lines[-1][2:])
    return result


@pytest.fixture(scope="module")
def collected_without_frameworks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    skip_log = tmp_path_factory.mktemp("collect") / "skipped.json"
    env = {**os.environ, "CLOUDCKPT_SKIP_LOG": str(skip_log)}
    out = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    assert lines, f"exit {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    result: dict = json.loads(lines[-1][2:])
    result["skip_log"] = json.loads(skip_log.read_text()) if skip_log.exists() else None
    pytest_output = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("@@"))
    result["output"] = pytest_output[-6000:] + out.stderr[-2000:]
    return result


def test_the_suite_collects_without_any_framework(collected_without_frameworks: dict) -> None:
    got = collected_without_frameworks
    failed = [r for r in got["reports"] if r["outcome"] == "failed"]
    assert not failed, f"collection errors without frameworks:\n{got['output']}"
    assert got["rc"] == 0, got["output"]
    assert got["blocked"] == [], f"imported although blocked: {got['blocked']}"


def test_every_module_imports_or_skips_naming_its_framework(collected_without_frameworks: dict) -> None:
    got = collected_without_frameworks
    imported = {Path(f).resolve() for f in got["files"] if f}
    skipped = {r["nodeid"]: r["reason"] for r in got["reports"] if r["outcome"] == "skipped"}
    files = sorted(p for d in ("cloudckpt", "tests") for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)
    assert ROOT / "tests" / "scripts" / "multihost_worker.py" in files  # the files of the helpers are included
    unaccounted = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__main__.py":  # pytest never imports it: it would run the program
            continue
        reason = skipped.get(rel)
        if path.resolve() in imported:
            continue
        if reason is None or not any(fw in reason for fw in FRAMEWORKS):
            unaccounted.append(f"{rel}: {reason or 'neither imported nor skipped'}")
    assert not unaccounted, "\n".join(unaccounted)
    # the framework parts are there and say why they do not run
    for rel, fw in [("tests/test_torch.py", "torch"), ("tests/test_jax_sharded.py", "jax"), ("cloudckpt/frameworks/torch.py", "torch"), ("cloudckpt/frameworks/jax.py", "jax")]:  # fmt: skip
        assert fw in skipped.get(rel, ""), (rel, skipped.get(rel))


def test_the_skip_log_lists_what_skipped_for_a_framework(collected_without_frameworks: dict) -> None:
    """CLOUDCKPT_SKIP_LOG (tests/conftest.py) is how .ci/run finds the tests to run again with the frameworks."""
    log = collected_without_frameworks["skip_log"]
    assert log is not None, "tests/conftest.py wrote no CLOUDCKPT_SKIP_LOG"
    reasons = {entry["nodeid"]: entry["reason"] for entry in log}
    for rel, fw in [("tests/test_torch.py", "torch"), ("tests/test_multihost.py", "torch"), ("tests/test_jax_sharded.py", "jax"), ("cloudckpt/frameworks/jax_group.py", "jax")]:  # fmt: skip
        assert fw in reasons.get(rel, ""), (rel, reasons.get(rel))


FIRST_LOCAL_SAVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cloudckpt

    root = sys.argv[1]
    before = sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[2].split(","))
    url = cloudckpt.save(root + "/one/ckpt-1", {"w": np.ones((4, 4), np.float32), "b": np.arange(3, dtype=">f8"), "step": 1})
    out = cloudckpt.load(url)
    assert out["w"].dtype == np.float32 and out["step"] == 1, out
    ckpt = cloudckpt.Checkpoint(w=np.zeros((2, 3), np.float32), step=0)
    manager = cloudckpt.CheckpointManager(ckpt, root + "/run", max_to_keep=2)
    manager.restore_or_initialize()
    manager.save()
    restored = cloudckpt.Checkpoint(w=np.ones((2, 3), np.float32), step=5)
    assert cloudckpt.CheckpointManager(restored, root + "/run", max_to_keep=2).restore_or_initialize() == manager.latest_checkpoint
    assert restored.step == 0 and not restored.w.any()
    after = sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[2].split(","))
    print("@@" + json.dumps({"before": before, "after": after}))
""")


def test_a_first_float32_save_and_load_import_nothing_heavy(tmp_path: Path) -> None:
    got = _python(FIRST_LOCAL_SAVE, str(tmp_path), ",".join(NOT_ON_LOCAL_PATH))
    assert got == {"before": [], "after": []}


def test_ml_dtypes_is_imported_when_a_checkpoint_holds_bfloat16(tmp_path: Path) -> None:
    url = cloudckpt.save(str(tmp_path / "ckpt-1"), {"h": np.arange(4).astype(ml_dtypes.bfloat16), "w": np.ones(2, np.float32)})
    code = textwrap.dedent("""
        import json, sys
        import cloudckpt

        before = "ml_dtypes" in sys.modules
        out = cloudckpt.load(sys.argv[1])
        print("@@" + json.dumps({"before": before, "after": "ml_dtypes" in sys.modules,
                                 "dtype": str(out["h"].dtype), "values": out["h"].astype("f4").tolist()}))
    """)
    got = _python(code, url)
    assert got == {"before": False, "after": True, "dtype": "bfloat16", "values": [0.0, 1.0, 2.0, 3.0]}


def test_a_first_s3_save_creates_one_client_and_imports_no_other_backend(s3_server, s3_bucket: str) -> None:
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        import aiobotocore.session
        import cloudckpt

        clients = []
        create_client = aiobotocore.session.AioSession.create_client

        def counted(self, *args, **kwargs):  # the real client, counted
            clients.append(args[0] if args else kwargs.get("service_name"))
            return create_client(self, *args, **kwargs)

        aiobotocore.session.AioSession.create_client = counted
        root, options = sys.argv[1], json.loads(sys.argv[2])
        url = cloudckpt.save(root + "/one/ckpt-1", {"w": np.ones((4, 4), np.float32), "step": 1}, storage_options=options)
        assert cloudckpt.load(url, storage_options=dict(options))["step"] == 1
        ckpt = cloudckpt.Checkpoint(w=np.zeros(3, np.float32), step=0)
        manager = cloudckpt.CheckpointManager(ckpt, root + "/run", max_to_keep=1, storage_options=dict(options))
        manager.restore_or_initialize()
        manager.save()
        manager.save()
        assert cloudckpt.latest_checkpoint(root + "/run", storage_options=options).endswith("/ckpt-2")
        heavy = sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[3].split(","))
        print("@@" + json.dumps({"clients": clients, "heavy": heavy}))
    """)
    unused = ("gcsfs", "google", "zarr", "ml_dtypes", "torch", "jax", "click", "tqdm")
    options = servers.s3_storage_options(s3_server.endpoint_url)
    got = _python(code, f"s3://{s3_bucket}/imports-{uuid.uuid4().hex[:12]}", json.dumps(options), ",".join(unused))
    assert got == {"clients": ["s3"], "heavy": []}
