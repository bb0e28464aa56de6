"""Operator rules: small, safe, vectorised condition expressions and YAML with line numbers.

Taxonomies (:mod:`pipelines.core.taxonomy`) and playbooks (:mod:`pipelines.core.playbook`)
are written by operators, not programmers, and are evaluated for every scored
user. So a rule is a Python-like *expression* (``days_since_active >= 14 and
lifetime_orders < 1``) that is

* parsed once at start-up with :mod:`ast`, allowing only comparisons, ``and`` /
  ``or`` / ``not``, arithmetic, names, numbers and quoted category values
  (nothing can call arbitrary code, import or touch attributes);
* checked against the names its context offers (features, scores, stage, ...),
  with the file, line and field named in every error and a suggestion for a
  misspelt name;
* compiled to a closure over whole numpy columns, so a batch of 100k users costs
  a few array operations per rule, not a Python loop.

Category values (``stage == "dormant"``, ``tier in ["vip", "regular"]``) are
checked against the category's names and compiled to integer codes.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

Column = npt.NDArray[Any]
Ctx = Mapping[str, Column]
Fn = Callable[[Ctx, int], Any]  # a column, or a scalar that broadcasts

#: Keywords accepted as the always-true condition of a fallback entry.
ALWAYS = ("otherwise", "true", "True")


class RuleError(ValueError):
    """A configuration error, with ``file:line: field: problem`` in the message."""


# ---------------------------------------------------------------------- YAML with positions


@dataclass(frozen=True, slots=True)
class Located:
    """A parsed YAML document plus the line of every value, by path (``("stages", 0, "when")``)."""

    path: Path
    data: Any
    lines: dict[tuple[str | int, ...], int]

    def line(self, *key: str | int) -> int:
        """Line (1-based) of the value at ``key``, or of its nearest located parent."""
        k = tuple(key)
        while k not in self.lines and k:
            k = k[:-1]
        return self.lines.get(k, 1)

    def error(self, key: Sequence[str | int], problem: str) -> RuleError:
        return RuleError(f"{self.path}:{self.line(*key)}: {dotted(key)}: {problem}")


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``: a typo names its fix."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dotted(key: Sequence[str | int]) -> str:
    """``("stages", 0, "when")`` -> ``stages[0].when``."""
    out = ""
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(document)"


#: an operator file larger than this is refused (the shipped ones are a few KiB)
MAX_YAML_BYTES = 1 << 20


def load_yaml(path: Path) -> Located:
    """Parse ``path`` keeping each value's line; syntax errors name the file and line.

    YAML aliases (``*name``) are refused: expanding them is how a 300-byte file becomes a million
    values (an alias bomb) or a cycle, and a taxonomy or playbook has no need of them.
    """
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise RuleError(f"{path}: {size} bytes; an operator file may have at most {MAX_YAML_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RuleError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise RuleError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark is not None else 1
                raise RuleError(f"{path}:{line}: YAML alias *{event.anchor}: aliases are not allowed; write it out")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RuleError(f"{path}:{line}: YAML syntax: {err.problem or err}") from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is None:
        raise RuleError(f"{path}:1: (document): empty file")
    return Located(path, _convert(node, (), lines, path), lines)


def _convert(node: yaml.Node, key: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int], path: Path) -> Any:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise RuleError(f"{path}:{k_node.start_mark.line + 1}: {dotted(key)}: keys must be plain names")
            k = str(k_node.value)
            if k in out:
                raise RuleError(f"{path}:{k_node.start_mark.line + 1}: {dotted((*key, k))}: duplicate key")
            out[k] = _convert(v_node, (*key, k), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*key, i), lines, path) for i, v in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node, deep=True)


# ---------------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Category:
    """A categorical variable: values are int codes into ``names``."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The names an expression may use, by kind.

    ``numbers``: float columns (features, scores); ``flags``: boolean columns;
    ``categories``: coded columns with their value names; ``params``: named
    constants of the file; ``functions``: ``name(arg) -> bool column`` where
    ``arg`` is a quoted string checked by the function's validator;
    ``unavailable``: names that exist elsewhere but not here, with the reason.
    """

    numbers: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()
    categories: Mapping[str, Category] = field(default_factory=dict)
    params: Mapping[str, float] = field(default_factory=dict)
    functions: Mapping[str, tuple[Callable[[str], str | None], Callable[[Ctx, str], Column]]] = field(
        default_factory=dict
    )
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def all_names(self) -> list[str]:
        return sorted({*self.numbers, *self.flags, *self.categories, *self.params, *self.functions})


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition: ``evaluate(ctx, n)`` -> boolean column of ``n`` rows."""

    source: str
    #: (name, op, constant) for every comparison of a name with a constant (e.g. for timers)
    thresholds: tuple[tuple[str, str, float], ...]
    _fn: Fn

    def evaluate(self, ctx: Ctx, n: int) -> npt.NDArray[np.bool_]:
        out = self._fn(ctx, n)
        return np.broadcast_to(np.asarray(out, dtype=bool), (n,))

    @property
    def always(self) -> bool:
        return self.source.strip() in ALWAYS


_CMP: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
}
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass(frozen=True, slots=True)
class _Node:
    """An intermediate compiled node: its kind and how to compute it."""

    kind: str  # "num" | "bool" | "cat" | "str" | "strs"
    fn: Fn
    category: str | None = None  # for "cat": the variable's name
    const: Any = None  # for numbers/strings known at compile time
    is_const: bool = False


def _const(value: Any) -> Fn:
    """A node function returning a constant (broadcast by the operations that use it)."""

    def fn(ctx: Ctx, n: int) -> Any:
        return value

    return fn


def error_at(doc: Located, key: Sequence[str | int]) -> Callable[[str], RuleError]:
    """``where`` for :func:`compile_condition`: errors at ``key`` of ``doc``."""
    return lambda problem: doc.error(key, problem)


def compile_condition(source: Any, vocab: Vocabulary, where: Callable[[str], RuleError]) -> Condition:
    """Compile ``source`` (a string, or a YAML bool) with the names of ``vocab``.

    ``where(problem)`` builds the error naming the file, line and field.
    """
    if isinstance(source, bool):
        source = "true" if source else "false"
    if not isinstance(source, str) or not source.strip():
        raise where(f"expected a condition (a string such as 'days_since_active >= 14'), got {source!r}")
    text = source.strip()
    if text in ALWAYS:
        return Condition(text, (), lambda ctx, n: np.ones(n, bool))
    if len(text) > MAX_RULE_CHARS:
        raise where(f"a condition of {len(text)} characters; at most {MAX_RULE_CHARS} (split it into params or stages)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise where(f"cannot parse {text!r}: {err.msg} (column {err.offset})") from None
    except ValueError as err:  # e.g. a NUL byte
        raise where(f"cannot parse the condition: {err}") from None
    except (RecursionError, MemoryError):
        raise where(f"a condition nested too deeply to parse (at most {MAX_RULE_DEPTH} levels)") from None
    depth = _depth(tree)
    if depth > MAX_RULE_DEPTH:
        raise where(f"a condition nested {depth} levels deep; at most {MAX_RULE_DEPTH} (a + b + ... nests too)")
    c = _Compiler(vocab, where)
    node = c.visit(tree.body)
    if node.kind != "bool":
        raise where(f"{text!r} is a {_KIND_WORD[node.kind]}, not a condition (compare it with something)")
    return Condition(text, tuple(c.thresholds), node.fn)


#: bounds on one condition: the compiler and numpy's evaluation recurse once per level
MAX_RULE_CHARS = 4_000
MAX_RULE_DEPTH = 100


def _depth(tree: ast.AST) -> int:
    """The deepest nesting of ``tree``, counted without recursion (a hostile file may nest thousands deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


_KIND_WORD = {"num": "number", "bool": "condition", "cat": "category", "str": "string", "strs": "list of strings"}


class _Compiler:
    def __init__(self, vocab: Vocabulary, where: Callable[[str], RuleError]) -> None:
        self.v = vocab
        self.where = where
        self.thresholds: list[tuple[str, str, float]] = []

    def fail(self, problem: str) -> RuleError:
        return self.where(problem)

    def visit(self, node: ast.expr) -> _Node:
        if isinstance(node, ast.BoolOp):
            parts = [self._bool(v) for v in node.values]
            fns = [p.fn for p in parts]
            if isinstance(node.op, ast.And):
                return _Node(
                    "bool", lambda ctx, n: np.logical_and.reduce([np.broadcast_to(f(ctx, n), (n,)) for f in fns])
                )
            return _Node("bool", lambda ctx, n: np.logical_or.reduce([np.broadcast_to(f(ctx, n), (n,)) for f in fns]))
        if isinstance(node, ast.UnaryOp):
            inner = self.visit(node.operand)
            if isinstance(node.op, ast.Not):
                b = self._as_bool(inner, node.operand)
                return _Node("bool", lambda ctx, n: np.logical_not(b.fn(ctx, n)))
            if isinstance(node.op, ast.USub) and inner.kind == "num":
                if inner.is_const:
                    return _Node("num", _const(-inner.const), const=-inner.const, is_const=True)
                return _Node("num", lambda ctx, n: -inner.fn(ctx, n))
            raise self.fail(f"operator {type(node.op).__name__} is not allowed here")
        if isinstance(node, ast.BinOp):
            op = _ARITH.get(type(node.op))
            if op is None:
                raise self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * /)")
            a, b = self._num(node.left), self._num(node.right)
            if a.is_const and b.is_const:
                try:
                    folded = float(op(a.const, b.const))
                except (ZeroDivisionError, OverflowError) as err:
                    raise self.fail(f"{ast.unparse(node)!r}: {err}") from None
                if not math.isfinite(folded):
                    raise self.fail(f"{ast.unparse(node)!r} is not a finite number")
                return _Node("num", _const(folded), const=folded, is_const=True)
            return _Node("num", lambda ctx, n: op(a.fn(ctx, n), b.fn(ctx, n)))
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return _Node("bool", _const(np.bool_(v)), const=v, is_const=True)
            if isinstance(v, (int, float)):
                return _Node("num", _const(float(v)), const=float(v), is_const=True)
            if isinstance(v, str):
                return _Node("str", _const(v), const=v, is_const=True)
            raise self.fail(f"constant {v!r} is not allowed")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            vals = []
            for elt in node.elts:
                if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
                    raise self.fail('a list may hold only quoted names, e.g. ["vip", "regular"]')
                vals.append(elt.value)
            return _Node("strs", _const(tuple(vals)), const=tuple(vals), is_const=True)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self.fail(f"{type(node).__name__} is not allowed in a condition")

    # ------------------------------------------------------------------ pieces

    def _name(self, name: str) -> _Node:
        v = self.v
        if name in v.params:
            val = float(v.params[name])
            return _Node("num", _const(val), const=val, is_const=True)
        if name in ("true", "false"):
            b = name == "true"
            return _Node("bool", _const(np.bool_(b)), const=b, is_const=True)
        if name in v.numbers:
            return _Node("num", lambda ctx, n: ctx[name])
        if name in v.flags:
            return _Node("bool", lambda ctx, n: ctx[name])
        if name in v.categories:
            return _Node("cat", lambda ctx, n: ctx[name], category=name)
        if name in v.unavailable:
            raise self.fail(f"{name!r} cannot be used here: {v.unavailable[name]}")
        raise self.fail(f"unknown name {name!r}{did_you_mean(name, v.all_names())}")

    def _num(self, node: ast.expr) -> _Node:
        out = self.visit(node)
        if out.kind != "num":
            raise self.fail(f"{ast.unparse(node)!r} is a {_KIND_WORD[out.kind]}, expected a number")
        return out

    def _bool(self, node: ast.expr) -> _Node:
        return self._as_bool(self.visit(node), node)

    def _as_bool(self, out: _Node, node: ast.expr) -> _Node:
        if out.kind != "bool":
            raise self.fail(f"{ast.unparse(node)!r} is a {_KIND_WORD[out.kind]}, expected a condition")
        return out

    def _codes(self, cat: str, values: Sequence[str]) -> list[int]:
        names = self.v.categories[cat].names
        codes = []
        for val in values:
            if val not in names:
                raise self.fail(f"{cat} has no value {val!r}; it is one of {', '.join(names)}")
            codes.append(names.index(val))
        return codes

    def _compare(self, node: ast.Compare) -> _Node:
        parts: list[_Node] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            parts.append(self._compare_one(left, op, right))
            left = right
        if len(parts) == 1:
            return parts[0]
        fns = [p.fn for p in parts]
        return _Node("bool", lambda ctx, n: np.logical_and.reduce([np.broadcast_to(f(ctx, n), (n,)) for f in fns]))

    def _compare_one(self, left_e: ast.expr, op: ast.cmpop, right_e: ast.expr) -> _Node:
        a, b = self.visit(left_e), self.visit(right_e)
        if isinstance(op, (ast.In, ast.NotIn)):
            if a.kind != "cat" or b.kind != "strs":
                raise self.fail('\'in\' compares a category with a list, e.g. tier in ["vip", "regular"]')
            assert a.category is not None
            codes = np.array(self._codes(a.category, b.const), np.int64)
            neg = isinstance(op, ast.NotIn)
            return _Node("bool", lambda ctx, n: np.isin(a.fn(ctx, n), codes, invert=neg))
        sym, fn = _CMP.get(type(op), ("", None))
        if fn is None:
            raise self.fail(f"comparison {type(op).__name__} is not allowed")
        if a.kind == "cat" or b.kind == "cat":
            cat_node, other = (a, b) if a.kind == "cat" else (b, a)
            if sym not in ("==", "!=") or other.kind != "str":
                raise self.fail(
                    f"{cat_node.category} is a category: compare it with == / != and a quoted value, "
                    f'e.g. {cat_node.category} == "{self.v.categories[str(cat_node.category)].names[0]}"'
                )
            assert cat_node.category is not None
            code = self._codes(cat_node.category, [other.const])[0]
            f_cat = cat_node.fn
            return _Node("bool", lambda ctx, n: fn(f_cat(ctx, n), code))
        if a.kind == "bool" and b.kind == "bool" and sym in ("==", "!="):
            return _Node("bool", lambda ctx, n: fn(a.fn(ctx, n), b.fn(ctx, n)))
        if a.kind != "num" or b.kind != "num":
            raise self.fail(
                f"cannot compare a {_KIND_WORD[a.kind]} with a {_KIND_WORD[b.kind]} in "
                f"{ast.unparse(left_e)} {sym} {ast.unparse(right_e)}"
            )
        # remember name-vs-constant comparisons (silence thresholds feed the timers)
        if isinstance(left_e, ast.Name) and b.is_const and not a.is_const:
            self.thresholds.append((left_e.id, sym, float(b.const)))
        elif isinstance(right_e, ast.Name) and a.is_const and not b.is_const:
            self.thresholds.append((right_e.id, _FLIP[sym], float(a.const)))
        return _Node("bool", lambda ctx, n: fn(a.fn(ctx, n), b.fn(ctx, n)))

    def _call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name) or node.func.id not in self.v.functions:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            known = ", ".join(sorted(self.v.functions)) or "none here"
            raise self.fail(f"unknown function {name!r} (functions: {known})")
        if (
            node.keywords
            or len(node.args) != 1
            or not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))
        ):
            raise self.fail(f'{node.func.id}() takes one quoted name, e.g. {node.func.id}("days_since_active")')
        check, impl = self.v.functions[node.func.id]
        arg = node.args[0].value
        problem = check(arg)
        if problem:
            raise self.fail(f"{node.func.id}({arg!r}): {problem}")
        return _Node("bool", lambda ctx, n: impl(ctx, arg))


# ---------------------------------------------------------------------- small validators


def need(
    doc: Located, obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], at: tuple[str | int, ...]
) -> Any:
    """``obj[key]`` of type ``kind``, or an error naming the file, line and field."""
    if key not in obj:
        raise doc.error(at, f"missing required field {key!r}")
    return check_type(doc, obj[key], kind, (*at, key))


def check_type(doc: Located, value: Any, kind: type | tuple[type, ...], at: tuple[str | int, ...]) -> Any:
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or bad_bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise doc.error(at, f"expected {names}, got {type(value).__name__} {value!r}")
    return value


def only_keys(doc: Located, obj: Mapping[str, Any], allowed: Sequence[str], at: tuple[str | int, ...]) -> None:
    """Unknown keys are errors (a typo must not silently drop a setting)."""
    for k in obj:
        if k not in allowed:
            raise doc.error((*at, k), f"unknown field {k!r}{did_you_mean(k, allowed)}; allowed: {', '.join(allowed)}")
