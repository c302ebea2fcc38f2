"""The manifest's structural checks, read from its JSON Schema (``manifest.schema.json``).

The schema is generated from the manifest's types
(:mod:`cloudckpt.format.manifest_types`, by :mod:`cloudckpt.format.schema`;
a test keeps it current) and ships as package data; here it becomes a check
plan, built once on first use: a closure per schema that checks required
and unknown fields, JSON types, integer bounds, enums, patterns, lengths
and list items. A failure raises :class:`Invalid` naming the JSON path of
the bad field (``arrays[3].shape[1]``) and what was expected. What a schema
cannot say (cross-field rules) is :mod:`cloudckpt.format.manifest_check`'s.

Example:
    >>> check_structure({"key": "d/x", "size": -1, "crc32c": 0}, "object", "objects[0]")
    Traceback (most recent call last):
    ...
    cloudckpt.format.structure.Invalid: objects[0].size: expected an integer in [0, 72057594037927936], got -1
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Invalid", "check_structure", "check_header"]

Check = Callable[[Any], None]
_JSON_TYPES = {int: "an integer", str: "a string", float: "a number", bool: "a boolean", type(None): "null"}
_NAMES = {**_JSON_TYPES, list: "a list", dict: "an object"}


class Invalid(Exception):
    """What is wrong with a manifest, and where (the parser turns it into a CorruptCheckpointError naming the URL).

    Example:
        >>> str(Invalid("arrays[0].nbytes: expected an integer, got 'x'"))
        "arrays[0].nbytes: expected an integer, got 'x'"
    """


class _Bad(Exception):
    """A structural failure on its way up: the path is collected while it unwinds."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []
        self.context = ""

    def invalid(self, root: str) -> Invalid:
        path = "".join(reversed(self.path))
        path = (path.lstrip(".") or root) if root == "manifest" else root + path
        return Invalid(f"{path}: {self.message}{self.context}")


def _got(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(expected: str, v: Any) -> _Bad:
    return _Bad(f"expected {expected}, got {_got(v)}")


# -- keywords (JSON Schema) -----------------------------


def _regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema's '$' is the end of the string (Python's also matches before a final newline)
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern)


def _bounds(kw: dict[str, Any]) -> tuple[Any, Any, str]:
    lo = kw.pop("minimum", None)
    hi = kw.pop("maximum", None)
    if "exclusiveMaximum" in kw:
        hi, x = kw.pop("exclusiveMaximum"), True
    else:
        x = False
    text = "" if lo is None and hi is None else f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if x else ']'}"
    if x:
        hi = hi - 1 if isinstance(hi, int) else hi
    return lo, hi, text


def _keywords(tp: Any, kw: dict[str, Any]) -> Check:
    """The check of a value of JSON type ``tp`` (None: any) under the keywords ``kw``."""
    ok, expected = _keyword_test(tp, kw)

    def check(v: Any) -> None:
        if not ok(v):
            raise _bad(expected, v)

    return check


def _keyword_test(tp: Any, kw: dict[str, Any]) -> tuple[Callable[[Any], bool], str]:
    """The predicate of a value of JSON type ``tp`` (None: any) under the keywords ``kw``, and what it expects."""
    kw = {k: v for k, v in kw.items() if k != "description"}
    lo, hi, text = _bounds(kw)
    size = (kw.pop("minLength", None), kw.pop("maxLength", None), "characters")
    if size[0] is None and size[1] is None:
        size = (kw.pop("minItems", None), kw.pop("maxItems", None), "items")
    nmin, nmax, unit = size
    kw_pattern = kw.pop("pattern", None)
    regex: list[re.Pattern[str]] = []  # (compiled on first use: a load meets few of the patterns)
    enum = kw.pop("enum", None)
    allowed = None if enum is None else {(type(e), e) for e in enum}
    enum_types = None if enum is None else tuple({type(e) for e in enum})
    any_of = [_keyword_test(*_of_schema(s))[0] for s in kw.pop("anyOf", [])]
    prefix = [_keyword_test(*_of_schema(s))[0] for s in kw.pop("prefixItems", [])]
    if kw:
        raise TypeError(f"no structural check for the keywords {sorted(kw)}")
    types_ = None if tp is None else (int, float) if tp is float else (tp,)
    expected = (
        _NAMES.get(tp, "a value")
        + text
        + (f" of {nmin}..{nmax} {unit}" if nmin is not None or nmax is not None else "")
        + (f" matching {kw_pattern!r}" if kw_pattern is not None else "")
        + (f" one of {', '.join(map(repr, enum))}" if enum is not None else "")
        + (f" (one of {len(any_of)} forms)" if any_of else "")
    )

    passed: set[str] = set()  # strings that passed (a manifest repeats its dtypes)
    memo = tp is str and (kw_pattern is not None or bool(any_of))

    def ok(v: Any) -> bool:
        if memo and v in passed:
            return True
        if types_ is not None and type(v) not in types_:
            return False
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return False
        if (nmin is not None and len(v) < nmin) or (nmax is not None and len(v) > nmax):
            return False
        if kw_pattern is not None:
            if not regex:
                regex.append(_regex(kw_pattern))
            if regex[0].search(v) is None:
                return False
        if allowed is not None and enum_types is not None and (type(v) not in enum_types or (type(v), v) not in allowed):
            return False
        if prefix and not all(p(x) for p, x in zip(prefix, v, strict=False)):
            return False
        if any_of and not any(p(v) for p in any_of):
            return False
        if memo and len(passed) < 1024:
            passed.add(v)
        return True

    return ok, expected


def _of_schema(s: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The Python type of a schema's 'type' keyword (or None), and its other keywords."""
    names = {"integer": int, "string": str, "number": float, "boolean": bool, "null": type(None)}
    return names[s["type"]] if "type" in s else None, {k: v for k, v in s.items() if k != "type"}


def _int_check(lo: Any, hi: Any, expected: str) -> Check:
    """The fast path of the commonest check: an integer within bounds."""
    lo = -(1 << 4096) if lo is None else lo
    hi = 1 << 4096 if hi is None else hi

    def check(v: Any) -> None:
        if type(v) is not int or not lo <= v <= hi:
            raise _bad(expected, v)

    return check


# -- the schema ------------------------------------------------------------------

Schema = dict[str, Any]
_TYPE_OF = {"integer": int, "string": str, "number": float, "boolean": bool, "null": type(None), "array": list, "object": dict}
_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMaximum"})


def _load_schema() -> Schema:
    """The generated schema (package data beside this module)."""
    return json.loads(pathlib.Path(__file__).with_name("manifest.schema.json").read_bytes())  # type: ignore[no-any-return]


def _kw(s: Schema, *drop: str) -> dict[str, Any]:
    """The keywords of ``s`` but its description and ``drop``."""
    return {k: v for k, v in s.items() if k != "description" and k not in drop}


class _Plan:
    """The checks of the schema's parts, compiled once (lazily) and cached per part."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema  # (kept: the cache is keyed by the ids of its parts)
        self.cache: dict[int, Check] = {}

    def resolve(self, s: Schema) -> Schema:
        """``s``, or the definition its ``$ref`` names."""
        while "$ref" in s:
            s = self.schema["$defs"][s["$ref"].rsplit("/", 1)[1]]
        return s

    def part(self, name: str | None) -> Schema:
        """The definition ``name`` (None: the manifest)."""
        return self.schema if name is None else self.schema["$defs"][name]

    def of(self, s: Schema) -> Check:
        key = id(s)
        if key not in self.cache:
            self.cache[key] = self._build(s)
        return self.cache[key]

    def _build(self, s: Schema) -> Check:
        s = self.resolve(s)
        kw = _kw(s, "type")
        tp = s.get("type")
        if "oneOf" in s and "properties" not in s:
            return self._optional(s["oneOf"])
        if "oneOf" in s and tp == "object" and "t" in s["properties"] and "additionalProperties" not in s:
            return self._tagged([self.resolve(v) for v in s["oneOf"]])
        if "const" in s:
            return _keywords(None, {**_kw(s, "const"), "enum": [s["const"]]})
        if isinstance(tp, list):
            return self._union(tp, _kw(s, "type"))
        if tp == "object":
            return self._object(s) if "properties" in s else _keywords(dict, kw)
        if tp == "array":
            return self._list(s)
        if tp == "integer" and kw.keys() <= _BOUNDS:
            lo, hi, text = _bounds(dict(kw))
            return _int_check(lo, hi, "an integer" + text)
        return _keywords(_TYPE_OF[tp] if tp is not None else None, kw)

    def _list(self, s: Schema) -> Check:
        if "items" not in s:  # a fixed list: one schema per item
            items = [self.of(x) for x in s["prefixItems"]]
            n, head = len(items), _keywords(list, _kw(s, "type", "prefixItems"))

            def check_fixed(v: Any) -> None:
                head(v)
                if len(v) != n:
                    raise _bad(f"a list of {n} items", v)
                for k, c in enumerate(items):
                    try:
                        c(v[k])
                    except _Bad as exc:
                        exc.path.append(f"[{k}]")
                        raise

            return check_fixed
        head = _keywords(list, _kw(s, "type", "items"))
        item_schema = s["items"]

        def check(v: Any) -> None:
            head(v)
            item = self.of(item_schema)
            k = 0
            try:
                for k, x in enumerate(v):  # noqa: B007 (k names the bad item)
                    item(x)
            except _Bad as exc:
                exc.path.append(f"[{k}]")
                raise

        return check

    def _union(self, names: list[str], kw: dict[str, Any]) -> Check:
        """A value of one of the JSON types ``names``, under the keywords ``kw`` (null needs none)."""
        nullable = "null" in names
        tps = tuple(_TYPE_OF[n] for n in names if n != "null")
        if kw and len(tps) == 1:  # a constrained value, or null
            ok, expected = _keyword_test(tps[0], kw)

            def check_optional(v: Any) -> None:
                if v is not None and not ok(v):
                    raise _bad(expected + " or null", v)

            return check_optional
        expected = " or ".join(_JSON_TYPES[_TYPE_OF[n]] for n in names)
        inner = _keywords(None, kw) if kw else None

        def check_scalar(v: Any) -> None:
            if v is None and nullable:
                return
            if type(v) not in tps and not (float in tps and type(v) is int):
                raise _bad(expected, v)
            if inner is not None:
                inner(v)

        return check_scalar

    def _optional(self, forms: list[Schema]) -> Check:
        """``oneOf`` null or another form."""
        (form,) = [f for f in forms if f != {"type": "null"}]

        def check_optional(v: Any) -> None:
            if v is not None:
                self.of(form)(v)

        return check_optional

    def _tagged(self, variants: list[Schema]) -> Check:
        """A union of objects told apart by their field 't' (the tree's nodes)."""
        tags = {str(v["properties"]["t"]["const"]): v for v in variants}
        plan: dict[str, Check] = {}
        expected = f"a node (an object whose 't' is one of {', '.join(tags)})"

        def check(v: Any) -> None:
            t = v.get("t") if type(v) is dict else None
            c = plan.get(t) if type(t) is str else None
            if c is None:
                if t not in tags or type(t) is not str:
                    raise _bad(expected, v)
                c = plan[t] = self.of(tags[t])
            try:
                c(v)
            except _Bad as exc:
                if not exc.context and not exc.path:
                    exc.context = f" (a {t!r} node)"
                elif not exc.context and len(exc.path) == 1:
                    exc.context = f" (in a {t!r} node)"
                raise

        return check

    def _object(self, s: Schema) -> Check:
        props: dict[str, Schema] = s["properties"]
        required = frozenset(s.get("required", ()))
        closed = s.get("additionalProperties") is False
        allowed = frozenset(props)
        one_of = _one_of(s)
        fields: dict[str, Check] = {}

        def check(v: Any) -> None:
            if type(v) is not dict:
                raise _bad("an object", v)
            keys = v.keys()
            if not required <= keys:
                raise _Bad(f"missing field {_names(required - keys)}")
            if closed and not keys <= allowed:
                raise _Bad(f"unknown field {_names(keys - allowed)} (expected only {_names(allowed)})")
            if one_of and sum(k in v for k in one_of) != 1:
                raise _Bad(f"needs exactly one of {_names(one_of)}")
            k = ""
            try:
                for k, x in v.items():
                    c = fields.get(k)
                    if c is None:
                        if k not in allowed:
                            continue  # an open object's unknown field
                        c = fields[k] = self.of(props[k])
                    c(x)
            except _Bad as exc:
                exc.path.append(f".{k}")
                raise

        return check


def _one_of(s: Schema) -> frozenset[str]:
    """The fields of which an object holds exactly one (its ``oneOf`` of ``required``), if any."""
    return frozenset(f for form in s.get("oneOf", ()) for f in form["required"]) if "properties" in s else frozenset()


def _names(keys: Iterable[str]) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


_INT, _TYPES, _CONST, _PRED = range(4)  # the kinds of a field's test (the first three are inlined)


class _Fast:
    """The same checks as :class:`_Plan`, as predicates that only answer valid or not.

    The common checks (a bounded integer, a JSON type, a constant) are data
    that the object and list predicates test inline, so a valid manifest
    (the common case) pays about one call per object and list; an invalid
    one is checked again by the plan, which names the bad field.
    """

    def __init__(self, plan: _Plan) -> None:
        self.cache: dict[int, Callable[[Any], bool]] = {}
        self.plan = plan

    def pred(self, s: Schema) -> Callable[[Any], bool]:
        """The predicate of ``s`` (built on first use)."""
        key = id(s)
        if key not in self.cache:
            self.cache[key] = self._build(s)
        return self.cache[key]

    def test(self, s: Schema) -> tuple[int, Any, Any]:
        """The test of ``s``: (_INT, lo, hi), (_TYPES, types, None), (_CONST, value, None) or (_PRED, predicate, None)."""
        s = self.plan.resolve(s)
        return self._simple(s) or (_PRED, self.pred(s), None)

    @staticmethod
    def _simple(s: Schema) -> tuple[int, Any, Any] | None:
        """The test of ``s`` if it is data (a bounded integer, JSON types, a constant), else None."""
        kw, tp = _kw(s, "type"), s.get("type")
        if tp == "integer" and kw.keys() <= _BOUNDS:
            lo, hi, _ = _bounds(dict(kw))
            return (_INT, -(1 << 4096) if lo is None else lo, 1 << 4096 if hi is None else hi)
        if not kw and tp in ("string", "boolean", "number", "object"):
            return (_TYPES, (int, float) if tp == "number" else (_TYPE_OF[tp],), None)
        if not kw and isinstance(tp, list) and "array" not in tp and "object" not in tp:
            return (_TYPES, tuple({t for n in tp for t in ((int, float) if n == "number" else (_TYPE_OF[n],))}), None)
        if kw.keys() == {"const"}:
            return (_CONST, s["const"], None)
        return None

    def _build(self, s: Schema) -> Callable[[Any], bool]:
        s = self.plan.resolve(s)
        tp = s.get("type")
        if tp == "object" and "properties" in s:
            if "oneOf" in s and "additionalProperties" not in s:
                return self._tagged([self.plan.resolve(v) for v in s["oneOf"]])
            return self._object(s)
        if tp == "array" and "items" in s:
            return self._list(s)
        if tp in ("string", "number", "integer", "boolean") or (tp is None and "anyOf" in s):
            return _keyword_test(_TYPE_OF[tp] if tp is not None else None, _kw(s, "type"))[0]
        simple = self._simple(s)
        if simple is not None:
            return self._as_pred(simple)
        return _truth(self.plan.of(s))  # the rest (optional values, fixed lists): the plan's check

    @staticmethod
    def _as_pred(test: tuple[int, Any, Any]) -> Callable[[Any], bool]:
        """A simple test as a predicate."""
        kind, a, b = test
        if kind == _INT:
            return lambda v: type(v) is int and a <= v <= b
        if kind == _TYPES:
            return lambda v: type(v) in a
        return lambda v: v == a and type(v) is type(a)

    def _list(self, s: Schema) -> Callable[[Any], bool]:
        kw = _kw(s, "type", "items")
        head = _truth(_keywords(list, kw)) if kw else None
        item = s["items"]
        test: list[tuple[int, Any, Any]] = []

        def ok(v: Any) -> bool:
            if type(v) is not list or (head is not None and not head(v)):
                return False
            if not test:
                test.append(self.test(item))
            kind, a, b = test[0]
            if kind == _INT:
                for y in v:  # (a loop: shapes are short, a generator costs more than it saves)
                    if type(y) is not int or not a <= y <= b:
                        return False
                return True
            if kind == _TYPES:
                return all(type(y) in a for y in v)
            return all(map(a, v)) if kind == _PRED else all(y == a and type(y) is type(a) for y in v)

        return ok

    def _tagged(self, variants: list[Schema]) -> Callable[[Any], bool]:
        tags = {str(v["properties"]["t"]["const"]): v for v in variants}
        table: dict[str, Callable[[Any], bool]] = {}

        def ok(v: Any) -> bool:
            t = v.get("t") if type(v) is dict else None
            p = table.get(t) if type(t) is str else None
            if p is None:
                if t not in tags or type(t) is not str:
                    return False
                p = table[t] = self._object(tags[t], skip="t")
            return p(v)

        return ok

    def _object(self, s: Schema, skip: str = "") -> Callable[[Any], bool]:
        """The predicate of the object schema ``s``; ``skip``: a field not to test (a tag tested before)."""
        props: dict[str, Schema] = s["properties"]
        required = frozenset(s.get("required", ()))
        allowed = frozenset(props) if s.get("additionalProperties") is False else None
        one_of = _one_of(s)
        exact = allowed == required  # closed, every field required: the keys are exactly the fields
        # closed, and the optional fields are the ones of which exactly one is there: one key more than required
        one_more = allowed is not None and bool(one_of) and allowed - required == one_of
        n_one_more, closed = len(required) + 1, allowed or frozenset()
        fields: dict[str, tuple[int, Any, Any]] = {}

        def ok(v: Any) -> bool:
            if type(v) is not dict:
                return False
            k = v.keys()
            if exact:
                if k != required:
                    return False
            elif one_more:
                if len(k) != n_one_more or not k <= closed or not k >= required:
                    return False
            elif not k >= required or (allowed is not None and not k <= allowed) or (one_of and len(k & one_of) != 1):
                return False
            if not fields:
                fields.update((name, self.test(fs)) for name, fs in props.items() if name != skip)
            for name, x in v.items():
                test = fields.get(name)
                if test is None:
                    continue  # an open object's unknown field, or the tag a tagged union tested
                kind, a, b = test
                if kind == _INT:
                    if type(x) is not int or not a <= x <= b:
                        return False
                elif kind == _CONST:
                    if x != a or type(x) is not type(a):
                        return False
                elif kind == _TYPES:
                    if type(x) not in a:
                        return False
                elif not a(x):
                    return False
            return True

        return ok


def _truth(check: Check) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        try:
            check(v)
        except _Bad:
            return False
        return True

    return ok


_FAST: _Fast | None = None


def _fast() -> _Fast:
    """The check plan and its predicates, made on first use from the schema (a load pays it, ``import cloudckpt`` does not)."""
    global _FAST
    if _FAST is None:
        _FAST = _Fast(_Plan(_load_schema()))
    return _FAST


def check_structure(value: Any, part: str | None = None, root: str = "manifest") -> None:
    """Raise :class:`Invalid` unless ``value`` (parsed JSON) has the structure the schema states.

    ``part``: the name of a definition of the schema (``$defs``: ``"node"``,
    ``"array"``, ``"object"``, ...; None: the manifest). The message names
    the JSON path of the bad field and what was expected (``root`` names
    the value itself).

    Example:
        >>> check_structure({"t": "per_rank", "r": []}, "node", "tree")
        Traceback (most recent call last):
        ...
        cloudckpt.format.structure.Invalid: tree.r: expected a list of 1..1048576 items, got [] (in a 'per_rank' node)
    """
    fast = _fast()
    s = fast.plan.part(part)
    if fast.pred(s)(value):
        return
    try:
        fast.plan.of(s)(value)
    except _Bad as exc:
        raise exc.invalid(root) from None
    raise Invalid(f"{root}: does not have the structure of a {part or 'manifest'}")  # (the two agree)


def check_header(value: Any) -> None:
    """Like :func:`check_structure` for the manifest's header: its fields from 'format' to 'metadata' (its first line).

    Example:
        >>> check_header({"format": "cloudckpt", "format_version": 1, "created": -1})
        Traceback (most recent call last):
        ...
        cloudckpt.format.structure.Invalid: created: expected a number in [0, inf], got -1
    """
    fast = _fast()
    schema = fast.plan.schema
    props: dict[str, Schema] = schema["properties"]
    required = frozenset(schema["required"])
    names = list(props)
    if type(value) is not dict:
        raise Invalid(f"manifest: expected an object, got {_got(value)}")
    for k in names[: names.index("metadata") + 1]:
        if k not in value:
            if k in required:
                raise Invalid(f"manifest: missing field {k!r}")
            continue
        if fast.pred(props[k])(value[k]):
            continue
        try:
            fast.plan.of(props[k])(value[k])
        except _Bad as exc:
            exc.path.append(f".{k}")
            raise exc.invalid("manifest") from None
