"""The process-group providers that cloudckpt.distributed.group owns: frameworks plug in, the core imports none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cloudckpt.distributed import group as g

ROOT = Path(__file__).resolve().parent.parent


class _Job(g.SingleProcess):
    """A stand-in for a framework's job of several processes."""

    size = 3


@pytest.fixture
def provider(monkeypatch):
    """register_provider, on a registry of its own (torch's provider, if loaded, is not asked)."""
    monkeypatch.setattr(g, "_PROVIDERS", {})
    monkeypatch.setattr(g, "_pending", {})
    return g.register_provider


def test_the_distributed_layer_imports_no_framework_module() -> None:
    for path in (ROOT / "cloudckpt" / "distributed").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("cloudckpt.frameworks", "torch", "jax")), (path.name, name)


def test_a_provider_gives_the_default_group_and_single_process_lets_the_next_one_speak(provider) -> None:
    job = _Job()
    provider("fw-a", lambda pg, timeout: g.SINGLE if pg is None else None)  # initialized with one process
    assert g.resolve_group(None) is g.SINGLE
    provider("fw-b", lambda pg, timeout: job if pg is None else None)
    assert g.resolve_group(None) is job
    seen = []
    provider("fw-c", lambda pg, timeout: seen.append(timeout) or (job if pg == "mine" else None))
    assert g.resolve_group("mine", timeout=7.0) is job and 7.0 in seen
    # a cloudckpt group is used as it is, without asking anyone
    assert g.resolve_group(job) is job


def test_a_process_group_no_provider_takes_is_refused(provider) -> None:
    provider("fw-a", lambda pg, timeout: None)
    with pytest.raises(TypeError, match=r"process_group must be a torch.distributed ProcessGroup or None, got object"):
        g.resolve_group(object())


def test_without_torch_or_jax_no_provider_module_is_loaded() -> None:
    code = (
        "import sys, cloudckpt\n"
        "from cloudckpt.distributed.group import resolve_group, SINGLE\n"
        "assert resolve_group(None) is SINGLE\n"
        "loaded = [m for m in sys.modules if m.startswith(('torch', 'jax', 'cloudckpt.frameworks.'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


def test_torch_registers_its_provider_once_imported() -> None:
    pytest.importorskip("torch")
    code = (
        "import torch, cloudckpt\n"
        "from cloudckpt.distributed import group as g\n"
        "assert g.resolve_group(None) is g.SINGLE  # not initialized: one process\n"
        "assert 'torch' in g._PROVIDERS and 'cloudckpt.frameworks.torch_group' in __import__('sys').modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
