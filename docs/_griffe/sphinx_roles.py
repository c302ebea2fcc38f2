"""A griffe extension for the API reference: Sphinx roles become links, ``Example:`` an examples section.

cloudckpt's docstrings cross-reference with Sphinx roles
(``:class:`~cloudckpt.CheckpointExistsError```, ``:meth:`restore_or_initialize```),
which Markdown would show as raw text. This turns each role into a
mkdocs-autorefs link when its target is documented on the API page (a public
name of ``cloudckpt`` or one of its members, ``cloudckpt.frameworks``), and
into inline code otherwise, so that a reference to an internal name never
fails ``mkdocs build --strict``. It also renames the ``Example:`` sections to
``Examples:``, the title griffe's Google-style parser knows (it would render
``Example:`` as an admonition of Markdown, ``>>>`` as nested quotes). The
docstrings in the package are not changed.

Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj):`(?P<tilde>~?)(?P<body>[^`]+)`")
EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)
TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")

# documented on docs/api.md besides the names of cloudckpt.__all__ and their members
EXTRA_DOCUMENTED = (
    "cloudckpt.frameworks.convert",
    "cloudckpt.frameworks.require",
    "cloudckpt.tools.verify.CheckpointReport",
    "cloudckpt.tools.verify.Damage",
)


def _public_ids(pkg: griffe.Module) -> tuple[set[str], dict[str, str]]:
    """Identifiers rendered on the API page, and canonical path -> public identifier."""
    ids: set[str] = {pkg.path, *EXTRA_DOCUMENTED}
    canonical: dict[str, str] = {}
    for name in pkg.exports or ():
        name = name if isinstance(name, str) else getattr(name, "name", str(name))
        if name not in pkg.members:
            continue
        member = pkg.members[name]
        public = f"{pkg.path}.{name}"
        ids.add(public)
        try:
            target = member.final_target if member.is_alias else member
        except Exception:  # an alias that griffe cannot resolve: link its public name only
            continue
        canonical[target.path] = public
        if target.is_class:
            for sub in target.members:
                if not sub.startswith("_") or sub == "__call__":
                    ids.add(f"{public}.{sub}")
                    canonical[f"{target.path}.{sub}"] = f"{public}.{sub}"
    return ids, canonical


def _scopes(obj: griffe.Object) -> list[str]:
    out: list[str] = []
    cur: Any = obj
    while cur is not None:
        out.append(cur.path)
        cur = cur.parent
    return out


def _resolve(target: str, obj: griffe.Object, ids: set[str], canonical: dict[str, str]) -> str | None:
    candidates = [target] if target.startswith("cloudckpt") else []
    candidates += [f"{scope}.{target}" for scope in _scopes(obj)]
    for c in candidates:
        if c in ids:
            return c
        if c in canonical:
            return canonical[c]
    return None


def _rewrite(text: str, obj: griffe.Object, ids: set[str], canonical: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        body = m.group("body").strip()
        titled = TITLED.match(body)
        title, target = (titled.group("title"), titled.group("target")) if titled else (body, body)
        if m.group("tilde") and not titled:
            title = target.rsplit(".", 1)[-1]
        ident = _resolve(target, obj, ids, canonical)
        return f"[`{title}`][{ident}]" if ident else f"`{title}`"

    return ROLE.sub(sub, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles of every docstring of the package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "cloudckpt":
            return
        ids, canonical = _public_ids(pkg)
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None and ":" in obj.docstring.value:
                text = EXAMPLE.sub(r"\g<indent>Examples:", obj.docstring.value)
                obj.docstring.value = _rewrite(text, obj, ids, canonical)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
