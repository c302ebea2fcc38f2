"""The manifest's structural checks, derived from its types (:mod:`cloudckpt.format.manifest_types`).

The same types generate the JSON Schema (:mod:`cloudckpt.format.schema`);
here they become a check plan, built once on first use: a closure per type
that checks required and unknown fields, JSON types, integer bounds,
enums, patterns, lengths and list items. A failure raises :class:`Invalid`
naming the JSON path of the bad field (``arrays[3].shape[1]``) and what
was expected. What the types cannot say (cross-field rules) is
:mod:`cloudckpt.format.manifest_check`'s.

Example:
    >>> from cloudckpt.format.manifest_types import ObjectEntry
    >>> check_structure({"key": "d/x", "size": -1, "crc32c": 0}, ObjectEntry, "objects[0]")
    Traceback (most recent call last):
    ...
    cloudckpt.format.structure.Invalid: objects[0].size: expected an integer in [0, 72057594037927936], got -1
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints, is_typeddict

if typing.TYPE_CHECKING:
    from cloudckpt.format import manifest_types as mt

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


# -- keywords (the S metadata, JSON Schema spelling) -----------------------------


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
    regex = _regex(kw_pattern) if kw_pattern is not None else None
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
        + (f" matching {kw_pattern!r}" if regex is not None else "")
        + (f" one of {', '.join(map(repr, enum))}" if enum is not None else "")
        + (f" (one of {len(any_of)} forms)" if any_of else "")
    )

    passed: set[str] = set()  # strings that passed (a manifest repeats its dtypes)
    memo = tp is str and (regex is not None or bool(any_of))

    def ok(v: Any) -> bool:
        if memo and v in passed:
            return True
        if types_ is not None and type(v) not in types_:
            return False
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return False
        if (nmin is not None and len(v) < nmin) or (nmax is not None and len(v) > nmax):
            return False
        if regex is not None and regex.search(v) is None:
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


# -- types -----------------------------------------------------------------------


class _Plan:
    """The checks of the manifest's types, compiled once (lazily) and cached per type."""

    def __init__(self) -> None:
        self.cache: dict[Any, Check] = {}
        self._hints: dict[Any, dict[str, Any]] = {}

    def required(self, td: Any) -> frozenset[str]:
        """The required fields of ``td`` (as the schema states them: ``__required_keys__`` misses string annotations)."""
        return frozenset(k for k, v in self.hints(td).items() if get_origin(v) is not NotRequired)

    def hints(self, td: Any) -> dict[str, Any]:
        """The fields of the TypedDict ``td`` and their types."""
        if td not in self._hints:
            self._hints[td] = get_type_hints(td, vars(mt), include_extras=True)
        return self._hints[td]

    def of(self, tp: Any, kw: dict[str, Any] | None = None) -> Check:
        key = (tp, repr(kw)) if kw else tp
        if key not in self.cache:
            self.cache[key] = self._build(tp, dict(kw or {}))
        return self.cache[key]

    def _build(self, tp: Any, kw: dict[str, Any]) -> Check:
        origin, args = get_origin(tp), get_args(tp)
        if origin is typing.Annotated:
            for m in tp.__metadata__:
                if isinstance(m, mt.S):
                    kw.update(m.keywords)
            return self.of(tp.__origin__, kw)
        if origin is NotRequired:
            return self.of(args[0], kw)
        if isinstance(tp, type) and is_typeddict(tp):
            return self._object(tp)
        if origin in (Union, types.UnionType):
            return self._union(args, kw)
        if origin is Literal:
            return _keywords(None, {**kw, "enum": list(args)})
        if origin in (list, tuple):
            return self._list(args, kw, origin is tuple)
        if origin is dict:
            return _keywords(dict, kw) if kw.keys() - {"description"} else _typed(dict, "an object")
        if tp is Any:
            return lambda v: None
        if tp in _JSON_TYPES:
            plain = kw.keys() - {"description", "minimum", "maximum", "exclusiveMaximum"}
            if tp is int and not plain:
                lo, hi, text = _bounds(dict(kw))
                return _int_check(lo, hi, "an integer" + text)
            return _keywords(tp, kw)
        raise TypeError(f"no structural check for {tp!r}")

    def _list(self, args: tuple[Any, ...], kw: dict[str, Any], fixed: bool) -> Check:
        head = _keywords(list, kw)
        if fixed:
            n, items = len(args), [self.of(a) for a in args]

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
        item_type = args[0]

        def check(v: Any) -> None:
            head(v)
            item = self.of(item_type)
            k = 0
            try:
                for k, x in enumerate(v):  # noqa: B007 (k names the bad item)
                    item(x)
            except _Bad as exc:
                exc.path.append(f"[{k}]")
                raise

        return check

    def _union(self, args: tuple[Any, ...], kw: dict[str, Any]) -> Check:
        if "anyOf" in kw:  # the keywords state the forms (as the schema does)
            return _keywords(None, kw)
        others = [a for a in args if a is not type(None)]
        nullable = len(others) < len(args)
        if all(a in _JSON_TYPES for a in others):
            tps = tuple(others)
            expected = " or ".join(_JSON_TYPES[a] for a in args)
            inner = _keywords(None, kw) if kw.keys() - {"description"} else None

            def check_scalar(v: Any) -> None:
                if v is None and nullable:
                    return
                if type(v) not in tps and not (float in tps and type(v) is int):
                    raise _bad(expected, v)
                if inner is not None:
                    inner(v)

            return check_scalar
        if len(others) == 1:
            tp = others[0]

            def check_optional(v: Any) -> None:
                if v is not None:
                    self.of(tp, kw)(v)

            return check_optional
        return self._tagged(others)

    def _tagged(self, variants: list[Any]) -> Check:
        """A union of objects told apart by their field 't' (the tree's nodes)."""
        tags = {get_args(get_type_hints(a)["t"])[0]: a for a in variants}
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

    def _object(self, td: Any) -> Check:
        hints = self.hints(td)
        required = self.required(td)
        closed = td not in mt.OPEN
        allowed = frozenset(hints)
        one_of = mt.EXACTLY_ONE_OF.get(td)
        fields: dict[str, Check] = {}

        def check(v: Any) -> None:
            if type(v) is not dict:
                raise _bad("an object", v)
            keys = v.keys()
            if not required <= keys:
                raise _Bad(f"missing field {_names(required - keys)}")
            if closed and not keys <= allowed:
                raise _Bad(f"unknown field {_names(keys - allowed)} (expected only {_names(allowed)})")
            if one_of is not None and sum(k in v for k in one_of) != 1:
                raise _Bad(f"needs exactly one of {_names(one_of)}")
            k = ""
            try:
                for k, x in v.items():
                    c = fields.get(k)
                    if c is None:
                        if k not in allowed:
                            continue  # an open object's unknown field
                        c = fields[k] = self.of(hints[k])
                    c(x)
            except _Bad as exc:
                exc.path.append(f".{k}")
                raise

        return check


def _typed(tp: type, expected: str) -> Check:
    def check(v: Any) -> None:
        if type(v) is not tp:
            raise _bad(expected, v)

    return check


def _names(keys: Iterable[str]) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


_PLAN: _Plan | None = None


def _plan() -> _Plan:
    """The check plan, made on first use (importing the types costs ~3 ms: a load pays it, ``import cloudckpt`` does not)."""
    global _PLAN, mt
    if _PLAN is None:
        from cloudckpt.format import manifest_types

        mt = manifest_types  # (this module's name for the types module, bound here on first use)
        _PLAN = _Plan()
    return _PLAN


_M = object()  # a missing field
_INT, _TYPES, _CONST, _PRED = range(4)  # the kinds of a field's test (the first three are inlined)


class _Fast:
    """The same checks as :class:`_Plan`, as predicates that only answer valid or not.

    The common checks (a bounded integer, a JSON type, a constant) are data
    that the object and list predicates test inline, so a valid manifest
    (the common case) pays about one call per object and list; an invalid
    one is checked again by the plan, which names the bad field.
    """

    def __init__(self) -> None:
        self.cache: dict[Any, Callable[[Any], bool]] = {}
        self.plan = _plan()

    def pred(self, tp: Any) -> Callable[[Any], bool]:
        """The predicate of ``tp`` (built on first use)."""
        if tp not in self.cache:
            self.cache[tp] = self._build(tp)
        return self.cache[tp]

    def test(self, tp: Any, kw: dict[str, Any] | None = None) -> tuple[int, Any, Any]:
        """The test of ``tp``: (_INT, lo, hi), (_TYPES, types, None), (_CONST, value, None) or (_PRED, predicate, None)."""
        kw = {k: v for k, v in (kw or {}).items() if k != "description"}
        origin, args = get_origin(tp), get_args(tp)
        if origin is typing.Annotated:
            return self.test(tp.__origin__, {**kw, **_meta(tp)}) if not isinstance(tp.__origin__, type) or not is_typeddict(tp.__origin__) else (_PRED, self.pred(tp.__origin__), None)
        if origin is NotRequired:
            return self.test(args[0], kw)
        if tp is int and kw.keys() <= {"minimum", "maximum", "exclusiveMaximum"}:
            lo, hi, _ = _bounds(dict(kw))
            return (_INT, -(1 << 4096) if lo is None else lo, 1 << 4096 if hi is None else hi)
        if (not kw and tp in (str, bool, float, dict)) or (origin is dict and not kw):
            return (_TYPES, (int, float) if tp is float else (dict if origin is dict else tp,), None)
        if origin in (Union, types.UnionType) and not kw and all(a in _JSON_TYPES for a in args):
            return (_TYPES, tuple({t for a in args for t in ((int, float) if a is float else (a,))}), None)
        if origin is Literal and len(args) == 1 and not kw:
            return (_CONST, args[0], None)
        if tp is Any:
            return (_TYPES, (dict, list, str, int, float, bool, type(None)), None)
        return (_PRED, self.pred(typing.Annotated[tp, mt.S(**kw)] if kw else tp), None)

    def _build(self, tp: Any) -> Callable[[Any], bool]:
        origin, args = get_origin(tp), get_args(tp)
        base, kw = (tp.__origin__, _meta(tp)) if origin is typing.Annotated else (tp, {})
        origin, args = get_origin(base), get_args(base)
        if isinstance(base, type) and is_typeddict(base):
            return self._object(base)
        if origin is list:
            return self._list(args[0], kw)
        if origin in (Union, types.UnionType) and "anyOf" not in kw:
            others = [a for a in args if a is not type(None)]
            if len(others) > 1 and not all(a in _JSON_TYPES for a in others):
                return self._tagged(others)
        if (origin in (Union, types.UnionType) and "anyOf" in kw) or origin is Literal or base in _NAMES:
            return _keyword_test(None if origin else base, {**kw, **({"enum": list(args)} if origin is Literal else {})})[0]
        return _truth(self.plan.of(tp))  # the rest (optional values): the plan's check

    def _list(self, item: Any, kw: dict[str, Any]) -> Callable[[Any], bool]:
        head = _truth(_keywords(list, kw)) if kw.keys() - {"description"} else None
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

    def _tagged(self, variants: list[Any]) -> Callable[[Any], bool]:
        tags = {get_args(self.plan.hints(a)["t"])[0]: a for a in variants}
        table: dict[str, Callable[[Any], bool]] = {}

        def ok(v: Any) -> bool:
            if not table:
                table.update({t: self._object(a, skip="t") for t, a in tags.items()})
            t = v.get("t") if type(v) is dict else None
            p = table.get(t) if type(t) is str else None
            return p is not None and p(v)

        return ok

    def _object(self, td: Any, skip: str = "") -> Callable[[Any], bool]:
        """The predicate of the TypedDict ``td``; ``skip``: a field not to test (a tag tested before)."""
        hints, required = self.plan.hints(td), self.plan.required(td)
        allowed = frozenset(hints) if td not in mt.OPEN else None
        one_of = frozenset(mt.EXACTLY_ONE_OF.get(td, ()))
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
                fields.update((name, self.test(ftp)) for name, ftp in hints.items() if name != skip)
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


def _meta(tp: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for m in tp.__metadata__:
        if isinstance(m, mt.S):
            kw.update(m.keywords)
    return kw


_FAST: _Fast | None = None


def _fast(tp: Any) -> Callable[[Any], bool]:
    global _FAST
    if _FAST is None:
        _FAST = _Fast()
    return _FAST.pred(tp)


def check_structure(value: Any, tp: Any = None, root: str = "manifest") -> None:
    """Raise :class:`Invalid` unless ``value`` (parsed JSON) has the structure of the type ``tp``.

    ``tp``: a type of :mod:`cloudckpt.format.manifest_types` (None: the
    manifest). The message names the JSON path of the bad field and what was
    expected (``root`` names the value itself).

    Example:
        >>> from cloudckpt.format.manifest_types import Node
        >>> check_structure({"t": "per_rank", "r": []}, Node, "tree")
        Traceback (most recent call last):
        ...
        cloudckpt.format.structure.Invalid: tree.r: expected a list of 1..1048576 items, got [] (in a 'per_rank' node)
    """
    plan = _plan()
    tp = mt.Manifest if tp is None else tp
    if _fast(tp)(value):
        return
    try:
        plan.of(tp)(value)
    except _Bad as exc:
        raise exc.invalid(root) from None
    raise Invalid(f"{root}: does not have the structure of a {getattr(tp, '__name__', 'manifest value')}")  # (the two agree)


def check_header(value: Any) -> None:
    """Like :func:`check_structure` for the manifest's header: its fields from 'format' to 'metadata' (its first line).

    Example:
        >>> check_header({"format": "cloudckpt", "format_version": 1, "created": -1})
        Traceback (most recent call last):
        ...
        cloudckpt.format.structure.Invalid: created: expected a number in [0, inf], got -1
    """
    plan = _plan()
    hints, required = plan.hints(mt.Manifest), plan.required(mt.Manifest)
    names = list(hints)
    if type(value) is not dict:
        raise Invalid(f"manifest: expected an object, got {_got(value)}")
    for k in names[: names.index("metadata") + 1]:
        if k not in value:
            if k in required:
                raise Invalid(f"manifest: missing field {k!r}")
            continue
        if _fast(hints[k])(value[k]):
            continue
        try:
            plan.of(hints[k])(value[k])
        except _Bad as exc:
            exc.path.append(f".{k}")
            raise exc.invalid("manifest") from None
