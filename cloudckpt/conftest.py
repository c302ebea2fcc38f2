"""Doctests of the framework modules skip, with a reason, when their framework is not installed.

``cloudckpt/frameworks/torch.py`` imports torch and ``jax.py`` imports jax;
collecting their doctests would fail to import them, so without the
framework they are reported as skipped instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_INTEGRATIONS = {"dcp.py": "torch"}  # cloudckpt/integrations/dcp.py and its alias cloudckpt/dcp.py
_NEEDS = {"torch.py": "torch", "torch_dist.py": "torch", "torch_group.py": "torch", "jax.py": "jax", "jax_group.py": "jax"}


def _missing(file_path: Path) -> str | None:
    """Why the framework a framework module needs does not import, or None if it does."""
    name = None
    if file_path.parent.name == "frameworks" and file_path.name in _NEEDS:
        name = _NEEDS[file_path.name]
    elif file_path.name in _INTEGRATIONS and file_path.parent.name in ("integrations", "cloudckpt"):
        name = _INTEGRATIONS[file_path.name]
    if name is not None:
        try:  # imported, not just found: an installed framework that fails to import is skipped too
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} is not installed ({exc})"
    return None


class _Skipped(pytest.File):
    reason = ""

    def collect(self) -> Any:
        pytest.skip(f"{self.reason}: its doctests are not run")


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Generator[None, Any, Any]:
    result = yield
    reason = _missing(file_path)
    if reason is None:
        return result
    item = _Skipped.from_parent(parent, path=file_path)
    item.reason = reason
    return [item]
