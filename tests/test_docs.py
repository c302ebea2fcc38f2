"""The documentation site stays true.

(a) ``mkdocs build --strict`` builds the site (mkdocs.yml, docs/, the API
    reference generated from docstrings) in under 60 s (about 5 s on a
    2-core machine), logs nothing but its three progress lines (no warning,
    no "Formatting signatures requires either Black or Ruff"), and the API
    page documents every public name; skipped only when mkdocs is not
    installed (``pip install -e '.[docs]'``). The ``docs`` extra holds every
    package mkdocs.yml needs, the signature formatter included.
(b) Every public name of ``cloudckpt.__all__``, and every public method and
    property of ``Checkpoint``, ``CheckpointManager`` and
    ``PreemptionCheckpointHandler``, has a docstring with a runnable example
    (``>>>``); pytest runs those examples through ``--doctest-modules``.
(c) The Python blocks of docs/*.md marked ``<!-- runnable -->`` run, each on
    its own in an empty temporary directory (``memory://`` and local paths
    only, no servers); ``<!-- runnable requires="torch" -->`` blocks skip
    without that package. docs/format.md's blocks are run by
    tests/test_format_schema.py. Every other Python block must at least
    compile.
(d) The project stands alone: no tracked file cites a document that is not
    in the repository.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cloudckpt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD_SECONDS = 60

# --------------------------------------------------------------- (a) the site


def _nav_pages() -> list[str]:
    """The .md files named in mkdocs.yml's nav (read as text: no yaml needed)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


def test_every_docs_page_is_in_the_nav_and_exists() -> None:
    nav = _nav_pages()
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == pages, f"nav {sorted(nav)} != pages {pages}"
    for page in ("index.md", "quickstart.md", "concepts.md", "manager.md", "cloud.md", "cli.md", "cross-cloud.md",
                 "frameworks.md", "reliability.md", "benchmarks.md", "faq.md", "api.md", "format.md"):  # fmt: skip
        assert page in nav, page


@dataclass
class Site:
    out: Path  # the built site
    log: list[str]  # mkdocs' log lines (stdout and stderr)


# the only lines a clean build logs
BUILD_LOG = (r"INFO    -  Cleaning site directory", r"INFO    -  Building documentation to directory: .*",
             r"INFO    -  Documentation built in [\d.]+ seconds")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' to build the documentation site")
    out = tmp_path_factory.mktemp("site")
    # NO_MKDOCS_2_WARNING: mkdocs-material's banner about its end of life (not a warning of the build)
    # PYTHONPATH: this checkout's cloudckpt, whichever one is installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=5 * BUILD_SECONDS)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert took < BUILD_SECONDS, f"the site took {took:.1f} s to build (limit {BUILD_SECONDS} s)"
    return Site(out, [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()])


def test_site_build_logs_no_warning(site: Site) -> None:
    unexpected = [line for line in site.log if not any(re.fullmatch(p, line) for p in BUILD_LOG)]
    assert not unexpected, "mkdocs build logged more than its progress:\n" + "\n".join(unexpected)


def test_docs_extra_has_what_mkdocs_yml_needs() -> None:
    """On a fresh ``pip install -e '.[docs]'`` (no lint extra), the build must be just as clean."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["docs"]
    packages = {re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower() for requirement in extra}
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for needed in ("mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python", "pymdown-extensions"):
        assert needed in packages, f"the docs extra lacks {needed}"
    if re.search(r"^\s*separate_signature:\s*true", config, flags=re.M):
        # without either, mkdocstrings logs "Formatting signatures requires either Black or Ruff"
        assert packages & {"ruff", "black"}, "separate_signature needs ruff or black in the docs extra"


def test_site_builds_strict_with_every_page(site: Site) -> None:
    for page in _nav_pages():
        html = site.out / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert html.is_file(), html


def test_api_reference_documents_every_public_name(site: Site) -> None:
    html = (site.out / "api" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in cloudckpt.__all__ if n != "__version__" and f'id="cloudckpt.{n}"' not in html]
    assert not missing, f"api.md renders no section for {missing}"
    for name in ("copy", "verify"):
        # the functions, not modules of the same name (release 0.1's cloudckpt.copy module shadowed them)
        section = html[html.index(f'id="cloudckpt.{name}"') :][:2000]
        assert "doc-function" in section and "doc-module" not in section, f"cloudckpt.{name} must be rendered as the function"
    for cls, name in _public_methods():
        assert f'id="cloudckpt.{cls.__name__}.{name}"' in html, f"{cls.__name__}.{name}"
    assert ":class:`" not in html and ":meth:`" not in html, "a Sphinx role was not turned into a link"


def test_concepts_diagram_is_rendered_as_mermaid(site: Site) -> None:
    html = (site.out / "concepts" / "index.html").read_text(encoding="utf-8")
    assert '<pre class="mermaid"><code>' in html and "sequenceDiagram" in html


# ------------------------------------------------- (b) docstrings with examples


def _public_methods() -> list[tuple[type, str]]:
    out = []
    for cls in (cloudckpt.Checkpoint, cloudckpt.CheckpointManager, cloudckpt.PreemptionCheckpointHandler):
        for name, member in vars(cls).items():
            if name.startswith("_") and name != "__call__":
                continue
            if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
                out.append((cls, name))
    return out


def _doc_of(member: Any) -> str:
    if isinstance(member, property):
        member = member.fget
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    return member.__doc__ or ""  # not inspect.getdoc: an inherited docstring does not count


@pytest.mark.parametrize("name", [n for n in cloudckpt.__all__ if n != "__version__"])
def test_public_name_has_a_runnable_example(name: str) -> None:
    obj = getattr(cloudckpt, name)
    doc = obj.__doc__ or ""
    assert doc.strip(), f"cloudckpt.{name} has no docstring"
    assert ">>>" in doc, f"the docstring of cloudckpt.{name} has no runnable example (>>>)"
    module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
    assert module.startswith("cloudckpt"), f"cloudckpt.{name} is defined outside the package ({module})"


def test_version_is_a_version_string() -> None:
    # a str has no docstring of its own; it is documented in docs/api.md
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", cloudckpt.__version__)
    assert "__version__" in (DOCS / "api.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("cls", "name"), _public_methods(), ids=lambda x: getattr(x, "__name__", x))
def test_public_method_has_a_runnable_example(cls: type, name: str) -> None:
    doc = _doc_of(vars(cls)[name])
    assert doc.strip(), f"{cls.__name__}.{name} has no docstring"
    assert ">>>" in doc, f"the docstring of {cls.__name__}.{name} has no runnable example (>>>)"


# ------------------------------------------------------ (c) runnable doc blocks

RUNNABLE = re.compile(r"<!-- runnable(?P<attrs>[^>]*?)-->[ \t]*\n```python\n(?P<code>.*?)```", re.S)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MUST_HAVE_RUNNABLE = ("quickstart.md", "cross-cloud.md", "faq.md")


def _runnable_blocks() -> list[Any]:
    params = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name == "format.md":  # tests/test_format_schema.py runs these
            continue
        text = page.read_text(encoding="utf-8")
        for m in RUNNABLE.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            requires = re.search(r'requires="([^"]*)"', m.group("attrs"))
            needs = requires.group(1).split() if requires else []
            params.append(pytest.param(page, line, m.group("code"), needs, id=f"{page.name}:{line}"))
    return params


def test_pages_that_teach_by_example_have_runnable_blocks() -> None:
    pages = {p.values[0].name for p in _runnable_blocks()}
    for name in MUST_HAVE_RUNNABLE:
        assert name in pages, f"docs/{name} has no <!-- runnable --> python block"


@pytest.fixture
def isolated_memory_fs() -> Any:
    """``memory://`` is process-global: whatever a block writes there is removed after it."""
    from fsspec.implementations.memory import MemoryFileSystem

    keys, dirs = set(MemoryFileSystem.store), list(MemoryFileSystem.pseudo_dirs)
    yield
    for key in set(MemoryFileSystem.store) - keys:
        del MemoryFileSystem.store[key]
    MemoryFileSystem.pseudo_dirs[:] = dirs


@pytest.mark.usefixtures("isolated_memory_fs")
@pytest.mark.parametrize(("page", "line", "code", "needs"), _runnable_blocks())
def test_runnable_block_runs(page: Path, line: int, code: str, needs: list[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for module in needs:
        pytest.importorskip(module, reason=f"{module} is not installed: docs/{page.name}:{line} needs it")
    monkeypatch.chdir(tmp_path)
    source = "\n" * (line - 1) + code  # tracebacks point at the line of the page
    exec(compile(source, str(page), "exec"), {"__name__": f"docs_{page.stem.replace('-', '_')}_{line}"})


@pytest.mark.parametrize("page", sorted([*DOCS.glob("*.md"), *(ROOT / "examples").glob("*.md")]), ids=lambda p: p.name)
def test_every_python_block_compiles(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for m in PYTHON_BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        compile("\n" * (line - 1) + m.group(1), str(page), "exec")


def test_error_hierarchy_in_api_md_is_true() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    tree = text.split("```text\nCheckpointError\n", 1)[1].split("```", 1)[0]
    parents = [cloudckpt.CheckpointError]
    for line in tree.splitlines():
        m = re.match(r"^(?P<indent>[│ ]*)[├└]── (?P<name>\w+)(?:\s+\(also an? (?P<also>\w+)\))?", line)
        assert m, line
        depth = len(m.group("indent")) // 4 + 1
        cls = getattr(cloudckpt, m.group("name"))
        del parents[depth:]
        assert cls.__bases__[0] is parents[-1], f"{cls.__name__} is not documented under its base class"
        if m.group("also"):
            assert issubclass(cls, getattr(builtins, m.group("also"))), line
        parents.append(cls)
    documented = set(re.findall(r"── (\w+)", tree)) | {"CheckpointError"}
    errors = {n for n in cloudckpt.__all__ if n.endswith("Error")}
    assert documented == errors, documented ^ errors


# ------------------------------------------------------- (d) standing alone

# documents that are not part of the repository (spelled in pieces so that this file does not cite them)
OUTSIDE = re.compile(
    "|".join([r"STACK" r"\.md", r"DESIGN" r"\.md", r"\.\./" r"shared", r"\bDESIGN" r"('s)? invariant"])
)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_file_cites_a_document_outside_the_repository() -> None:
    hits = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary, or deleted in the work tree
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "files cite documents that are not in the repository (state the fact instead):\n" + "\n".join(hits)
