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

_NEEDS = {"torch.py": "torch", "torch_dist.py": "torch", "torch_group.py": "torch", "jax.py": "jax", "jax_group.py": "jax"}
# cloudckpt/integrations/
_INTEGRATIONS = {"dcp.py": "torch", "lightning.py": "torch lightning", "huggingface.py": "torch transformers"}
_ALIASES = {"dcp.py": "torch"}  # cloudckpt/dcp.py, the alias of cloudckpt.integrations.dcp


def _missing(file_path: Path) -> str | None:
    """Why the framework a framework module needs does not import, or None if it does."""
    table = {"frameworks": _NEEDS, "integrations": _INTEGRATIONS, "cloudckpt": _ALIASES}.get(file_path.parent.name, {})
    if file_path.name in table:
        names = table[file_path.name].split()
        for name in names:
            try:  # imported, not just found: an installed framework that fails to import is skipped too
                importlib.import_module(name)
            except ImportError as exc:
                needed = f"{' and '.join(names)} are needed: " if len(names) > 1 else ""
                return f"{needed}{name} is not installed ({exc})"
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
