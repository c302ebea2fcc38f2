"""The manifest's JSON Schema, generated from its types (:mod:`cloudckpt.format.manifest_types`).

``manifest.schema.json`` beside this module and the copy in docs/format.md
(section 13) are this module's output; rewrite both after changing the types
with ``python -m cloudckpt.format.schema --write`` (``--check`` exits 1 when
either is stale). Nothing imports this module at run time: readers check
manifests with :mod:`cloudckpt.format.manifest`.

Example:
    >>> s = manifest_schema()
    >>> s["$id"], s["$defs"]["size"]["minimum"]
    ('urn:cloudckpt:manifest:3', 0)
"""

from __future__ import annotations

import json
import pathlib
import sys
import types
import typing
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints, is_typeddict

from cloudckpt.format import manifest_types as mt

__all__ = ["manifest_schema", "schema_text", "main"]

SCHEMA_PATH = pathlib.Path(__file__).with_name("manifest.schema.json")
DOC_PATH = pathlib.Path(__file__).parents[2] / "docs" / "format.md"
BEGIN = "<!-- BEGIN manifest.schema.json -->"
END = "<!-- END manifest.schema.json -->"

_SCALARS = {int: "integer", str: "string", float: "number", bool: "boolean"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


class _Gen:
    def __init__(self) -> None:
        self.class_defs = {t: name for name, t in mt.DEFS.items() if isinstance(t, type)}

    # -- one type -> schema
    def of(self, tp: Any, *, define: bool = False) -> dict[str, Any]:
        """The schema of ``tp``; ``define``: for its own ``$defs`` entry (not a reference to it)."""
        if get_origin(tp) is typing.Annotated:
            return self._annotated(tp, define)
        if isinstance(tp, type) and is_typeddict(tp):
            name = self.class_defs.get(tp)
            return self._object(tp) if define or name is None else _ref(name)
        origin, args = get_origin(tp), get_args(tp)
        if origin is NotRequired:
            return self.of(args[0])
        if origin in (Union, types.UnionType):
            return self._union(args)
        if origin is Literal:
            return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
        if origin is list:
            return {"type": "array", "items": self.of(args[0])}
        if origin is tuple:
            return {"type": "array", "prefixItems": [self.of(a) for a in args]}
        if origin is dict:
            return {"type": "object"}
        if tp in _SCALARS:
            return {"type": _SCALARS[tp]}
        raise TypeError(f"no schema for {tp!r}")

    def _annotated(self, tp: Any, define: bool) -> dict[str, Any]:
        base, meta = tp.__origin__, tp.__metadata__
        at = next((k for k, m in enumerate(meta) if isinstance(m, mt.Def)), None)
        if at is not None:
            own = len(mt.DEFS[meta[at].name].__metadata__)  # the definition's own metadata, then the use's
            if define:
                meta = meta[at + 1 : at + own]
            else:
                return {**self._keywords(meta[at + own :]), **_ref(meta[at].name)}
        keywords = self._keywords(meta)
        out = {} if "anyOf" in keywords and get_origin(base) in (Union, types.UnionType) else self.of(base)
        if "description" in keywords:
            out = {"description": keywords.pop("description"), **out}
        return {**out, **keywords}

    @staticmethod
    def _keywords(meta: tuple[Any, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in meta:
            if isinstance(m, mt.S):
                out.update(m.keywords)
        return out

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        others = [a for a in args if a is not type(None)]
        if len(others) < len(args) and len(others) == 1:  # X | None
            inner = self.of(others[0])
            if isinstance(inner.get("type"), str) and "items" not in inner and "properties" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            return {"oneOf": [{"type": "null"}, inner]}
        if all(a in _SCALARS for a in others):
            return {"type": [_SCALARS[a] for a in others]}
        tags = [get_args(get_type_hints(a)["t"])[0] for a in others]  # a tagged union of node types
        return {"type": "object", "required": ["t"], "properties": {"t": {"enum": tags}}, "oneOf": [self.of(a) for a in others]}

    def _object(self, td: Any) -> dict[str, Any]:
        hints = get_type_hints(td, vars(mt), include_extras=True)
        out: dict[str, Any] = {"description": td.__doc__} if td.__doc__ else {}
        out.update(
            type="object",
            required=[k for k, v in hints.items() if get_origin(v) is not NotRequired],
            additionalProperties=td in mt.OPEN,
            properties={k: self.of(v) for k, v in hints.items()},
        )
        if td in mt.EXACTLY_ONE_OF:
            out["oneOf"] = [{"required": [k]} for k in mt.EXACTLY_ONE_OF[td]]
        return out


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a manifest, from its types (see the module example)."""
    gen = _Gen()
    versions = mt.FORMAT_VERSIONS
    top = gen.of(mt.Manifest, define=True)
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:cloudckpt:manifest:{versions[-1]}",
        "title": f"cloudckpt manifest, format versions {', '.join(map(str, versions[:-1]))} and {versions[-1]}",
    }
    defs = {name: gen.of(tp, define=True) for name, tp in mt.DEFS.items()}
    return {**head, **top, "$defs": defs}


def schema_text() -> str:
    """``manifest.schema.json`` as it is checked in: the schema, indented by two, with a final newline.

    Example:
        >>> schema_text().startswith('{\\n  "$schema"')
        True
    """
    return _pretty(manifest_schema(), "") + "\n"


def _pretty(v: Any, pad: str) -> str:
    """JSON indented by two, with lists of scalars on one line."""
    inner = pad + "  "
    if isinstance(v, dict) and v:
        items = ",\n".join(f"{inner}{json.dumps(k)}: {_pretty(x, inner)}" for k, x in v.items())
        return "{\n" + items + "\n" + pad + "}"
    if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
        return "[\n" + ",\n".join(inner + _pretty(x, inner) for x in v) + "\n" + pad + "]"
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def _doc_with(doc: str, text: str) -> str:
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n\n```json\n{text}```\n\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    """``--write``: rewrite the schema file and docs/format.md's copy; ``--check``: 1 if either is stale.

    Example:
        >>> main(["--check"])
        0
    """
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    doc = DOC_PATH.read_text(encoding="utf-8")
    new_doc = _doc_with(doc, text)
    if "--write" in args:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        DOC_PATH.write_text(new_doc, encoding="utf-8")
        return 0
    stale = SCHEMA_PATH.read_text(encoding="utf-8") != text or doc != new_doc
    if stale:
        print("manifest.schema.json or docs/format.md is stale: run python -m cloudckpt.format.schema --write")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
