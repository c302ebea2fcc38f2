"""The structure of docs/architecture.md stays true.

- The import-linter contracts of pyproject.toml hold: the layers (each imports only those below it), only the
  storage layer imports fsspec or a storage backend, the manager never imports the storage layer, the core never
  imports a framework, the library never imports its benchmarks.
- The import graph of cloudckpt and benchmarks/ has no circle, counted the strict way (tests/import_graph.py:
  an import inside a function counts).
- No module has more than 600 lines; no function more than 80 unless a ``# long: <reason>`` comment says why.
- No module imports another module's private (underscore) name.
"""

from __future__ import annotations

import ast
import shutil
import subprocess

import import_graph
import pytest

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    run = subprocess.run(
        [exe, "--config", "pyproject.toml", "--no-cache"],
        cwd=import_graph.ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(import_graph.ROOT), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout and "KEPT" in run.stdout


def test_the_import_graph_has_no_circle() -> None:
    assert import_graph.circles(import_graph.graph()) == []


def test_no_module_over_the_limit() -> None:
    over = {m: n for m, n in import_graph.module_lines().items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by job): {over}"


def test_no_function_over_the_limit_without_a_reason() -> None:
    over = [f"{f.module}.{f.name} ({f.lines} lines, l.{f.lineno})" for f in import_graph.functions()
            if f.lines > MAX_FUNCTION_LINES and not f.reason]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines without a '# long: <reason>' comment: {over}"


def test_no_module_imports_a_private_name_of_another() -> None:
    found = []
    for mod, path in import_graph.modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cloudckpt"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and node.module != mod:
                    found.append(f"{mod}: from {node.module} import {', '.join(private)}")
    assert not found, found


def test_the_counting_sees_lazy_imports(tmp_path) -> None:
    """An import inside a function is an edge: a circle made of lazy imports is found."""
    pkg = tmp_path / "cloudckpt"
    pkg.mkdir()
    (tmp_path / "benchmarks").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cloudckpt import b\n")
    (pkg / "b.py").write_text("def f():\n    from cloudckpt.a import x\n")
    g = import_graph.graph(tmp_path)
    assert import_graph.circles(g) == [["cloudckpt.a", "cloudckpt.b"]]
