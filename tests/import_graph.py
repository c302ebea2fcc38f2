"""The import graph of cloudckpt and benchmarks/, counted the strict way, and the size of modules and functions.

``python tests/import_graph.py`` prints what docs/architecture.md reports: the number of modules, the floors of
the graph (the longest chain of imports, circles collapsed), its circles, the largest modules and functions.
``--floors`` lists the modules floor by floor, ``--edges`` every module's imports.

Strict counting: an import inside a function or under ``TYPE_CHECKING`` is an import like any other. Only a
package ``__init__.py`` under 40 lines that does nothing but import and re-export is transparent: an import of
such a package counts as imports of what it re-exports. tests/test_architecture.py checks the limits.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cloudckpt", "benchmarks")


@dataclass(frozen=True)
class Function:
    module: str
    name: str
    lineno: int
    lines: int
    reason: str | None  # the "# long: ..." comment beside a function allowed over the limit


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = f
    return found


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = _base(mod, is_pkg, node)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _base(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <base> import ...``."""
    if not node.level:
        return node.module or ""
    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _owner(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _transparent(path: Path) -> bool:
    if path.name != "__init__.py":
        return False
    src = path.read_text()
    if src.count("\n") >= 40:
        return False
    for node in ast.parse(src).body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            continue
        return False
    return True


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules it imports (transparent packages looked through)."""
    known = modules(root)
    edges: dict[str, set[str]] = defaultdict(set)  # module -> the modules it imports (packages as such)
    raw: dict[str, set[str]] = defaultdict(set)  # module -> the dotted names it imports (``pkg.name`` kept)
    for mod, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(mod, path.name == "__init__.py", node, known):
                    owner = _owner(target, known)
                    if owner and owner != mod:
                        edges[mod].add(owner)
                        if isinstance(node, ast.Import):
                            raw[mod].add(target)
                if isinstance(node, ast.ImportFrom):
                    prefix = _base(mod, path.name == "__init__.py", node)
                    raw[mod].update(f"{prefix}.{a.name}" for a in node.names if _owner(f"{prefix}.{a.name}", known) not in (None, mod))
    transparent = {m for m, p in known.items() if _transparent(p)}
    exported = {m: _exports(m, known[m], known) for m in transparent}

    def resolve(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """The modules behind ``name`` (a module, or ``package.attribute`` of a transparent package)."""
        owner = _owner(name, known)
        if owner not in transparent or owner in seen:
            return {owner} if owner else set()
        attr = name[len(owner) + 1 :].partition(".")[0]
        if attr and attr in exported[owner]:
            return resolve(exported[owner][attr], seen | {owner})
        # the package as a whole (``import pkg``, or a name it does not re-export): all it imports
        return set().union(*(resolve(t, seen | {owner}) for t in edges[owner])) if edges[owner] else set()

    return {m: set().union(*(resolve(t) for t in raw[m])) - {m} for m in known if m not in transparent}


def _exports(mod: str, path: Path, known: dict[str, Path]) -> dict[str, str]:
    """The names a transparent ``__init__`` re-exports -> the dotted name each comes from."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = _base(mod, True, node)
            for a in node.names:
                out[a.asname or a.name] = f"{base}.{a.name}"
    return out


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    """Module -> its floor: 1 + the highest floor it imports (a circle shares one floor)."""
    comp = {m: i for i, c in enumerate(circles(g)) for m in c}
    key = {m: comp.get(m, m) for m in g}
    members: dict[object, list[str]] = defaultdict(list)
    for m in g:
        members[key[m]].append(m)
    memo: dict[object, int] = {}

    def floor(k: object) -> int:
        if k not in memo:
            memo[k] = 0
            deps = {key[w] for m in members[k] for w in g[m] if w in key} - {k}
            memo[k] = 1 + max((floor(d) for d in deps), default=0)
        return memo[k]

    return {m: floor(key[m]) for m in g}


def functions(root: Path = ROOT) -> list[Function]:
    out = []
    for mod, path in modules(root).items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                around = lines[max(0, first - 3) : node.lineno]
                reason = next((ln.split("# long:", 1)[1].strip() for ln in around if "# long:" in ln), None)
                out.append(Function(mod, node.name, node.lineno, node.end_lineno - node.lineno + 1, reason))
    return sorted(out, key=lambda f: -f.lines)


def module_lines(root: Path = ROOT) -> dict[str, int]:
    return {m: len(p.read_text().splitlines()) for m, p in modules(root).items()}


def main(argv: list[str]) -> None:
    g = graph()
    fl = floors(g)
    sizes = sorted(module_lines().items(), key=lambda kv: -kv[1])
    funcs = functions()
    print(f"modules: {len(modules())} ({len(g)} counted; {len(modules()) - len(g)} transparent __init__)")
    print(f"floors: {max(fl.values())}")
    print(f"circles: {len(circles(g))}", *(" <-> ".join(c) for c in circles(g)), sep="\n  ")
    print("largest modules:", ", ".join(f"{m} {n}" for m, n in sizes[:5]))
    print("largest functions:", ", ".join(f"{f.module}.{f.name} {f.lines}" for f in funcs[:5]))
    print(f"functions over 80 lines: {sum(f.lines > 80 for f in funcs)} ({sum(f.lines > 80 and not f.reason for f in funcs)} without a reason)")
    if "--floors" in argv:
        for k in sorted(set(fl.values())):
            print(k, " ".join(sorted(m for m in fl if fl[m] == k)))
    if "--edges" in argv:
        for m in sorted(g):
            print(m, "->", " ".join(sorted(g[m])))


if __name__ == "__main__":
    main(sys.argv[1:])
