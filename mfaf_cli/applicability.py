"""Where a model's map cannot be trusted: its training range and its applicability rules.

Two generic checks, per pixel, on the raw inputs (sensor units, before normalisation):

- **outside the training range**: any band below ``range_low - margin`` or above
  ``range_high + margin``, where the range is the training split's 0.1 / 99.9 % quantiles
  recorded in the model record (:class:`~mfaf_cli.metadata.ModalitySpec`) and the margin
  :data:`RANGE_MARGIN` of its span; a side where the training data were saturated is open
  (``range_open``); a band with a known sensor noise floor (``range_floor``: Sentinel-1
  VV / VH, :data:`NOISE_FLOOR_DB`) reads values below the floor as the floor, since they are
  noise, not a darker surface; models without the record skip this check;
- **rules**: named boolean expressions over bands *by meaning* (``red``, ``swir``, ``vv``...)
  that the model record carries, e.g. ``snow: (red - swir) / (red + swir) > 0.4 and red > 1500``.
  Rules are data: parsed by the small grammar below (numbers, band meanings, ``+ - * /``,
  comparisons, ``and or not``, parentheses), never by Python's ``eval``.

Reason codes (:func:`exclusion_codes`): 0 ok, 1 outside the training range, 2... one per rule
in record order, 255 nodata. A named rule wins over the range check (it is the more specific
explanation), the first matching rule over later ones.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from mfaf_cli.errors import UsageError
from mfaf_cli.metadata import DEFAULT_UNITS, MEANINGS, ModalitySpec, ModelMeta, meaning_of_name

#: Reason code of valid pixels that pass every check, and of pixels outside the range.
OK, OUT_OF_RANGE, NODATA = 0, 1, 255  # Checks.pixel_codes relies on OK, OUT_OF_RANGE = 0, 1
#: Name of code 1 (codes 2... are the rules' names).
RANGE_REASON = "outside-training-range"
#: Training-range quantiles (percent) recorded at train time.
RANGE_QUANTILES = (0.1, 99.9)
#: A pixel is outside the training range when a band leaves it by more than this fraction of
#: the band's range (so the extreme 0.1 % tails of the training data itself are not flagged).
RANGE_MARGIN = 0.1
#: Noise floor of SAR backscatter by band meaning, in dB: Sentinel-1 IW's noise-equivalent
#: sigma zero, specified as at most -22 dB (ESA Sentinel-1 User Handbook, IW mode; measured
#: about -22 to -26 dB across the swath). A sigma0 below it is noise, not a darker surface, so
#: the range check reads it as the floor: a model that saw values down to the floor has seen
#: everything darker too (calm water), one whose training data stop above it still flags it.
NOISE_FLOOR_DB: dict[str, float] = {"vv": -22.0, "vh": -22.0}
#: A warning is printed when more than this fraction of valid pixels is excluded.
WARN_FRACTION = 0.05
_RESERVED = {"ok", "nodata", RANGE_REASON}
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")

# ---- the expression grammar ---------------------------------------------------------------
Node = tuple[str, Any] | tuple[str, Any, Any]
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z][A-Za-z0-9_]*)|(?P<op><=|>=|==|!=|[-+*/()<>]))"
)
_SPELLINGS = {"−": "-", "×": "*", "÷": "/", "≤": "<=", "≥": ">=", "≠": "!="}
_COMPARE = ("<", "<=", ">", ">=", "==", "!=")


def _tokens(text: str) -> list[tuple[str, str]]:
    for k, v in _SPELLINGS.items():
        text = text.replace(k, v)
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"rule {text.strip()!r}: cannot read {text[pos:].strip()[:12]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the tokens; every node knows whether it is a number or a test."""

    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text.strip(), _tokens(text), 0

    def fail(self, why: str) -> UsageError:
        return UsageError(f"rule {self.text!r}: {why}")

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise self.fail("it ends too early")
        self.i += 1
        return self.toks[self.i - 1]

    def parse(self) -> Node:
        node = self.boolean()
        if self.i < len(self.toks):
            raise self.fail(f"unexpected {self.peek()!r}")
        if not _is_test(node):
            raise self.fail("it must be a test (e.g. 'red > 1500'), not a number")
        return node

    def boolean(self) -> Node:
        node = self.conjunction()
        while self.peek() == "or":
            self.take()
            node = ("or", self._test(node), self._test(self.conjunction()))
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.peek() == "and":
            self.take()
            node = ("and", self._test(node), self._test(self.negation()))
        return node

    def negation(self) -> Node:
        if self.peek() == "not":
            self.take()
            return ("not", self._test(self.negation()))
        left = self.arith()
        if self.peek() in _COMPARE:
            op = self.take()[1]
            return (op, self._num(left), self._num(self.arith()))
        return left

    def arith(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            node = (op, self._num(node), self._num(self.term()))
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            node = (op, self._num(node), self._num(self.factor()))
        return node

    def factor(self) -> Node:
        kind, tok = self.take()
        if tok == "-":
            return ("neg", self._num(self.factor()))
        if tok == "(":
            node = self.boolean()
            if self.take()[1] != ")":
                raise self.fail("a '(' is not closed")
            return node
        if kind == "num":
            return ("num", float(tok))
        if kind == "name" and tok not in ("and", "or", "not"):
            modality = _modality_of(tok)
            key = meaning_of_name(tok, modality) if modality else None
            if key is None:
                names = ", ".join(m for m in MEANINGS)
                raise self.fail(f"{tok!r} is not a band meaning (use {names})")
            return ("band", key)
        raise self.fail(f"unexpected {tok!r}")

    def _num(self, node: Node) -> Node:
        if _is_test(node):
            raise self.fail("a test is used as a number (add parentheses or a comparison)")
        return node

    def _test(self, node: Node) -> Node:
        if not _is_test(node):
            raise self.fail("'and' / 'or' / 'not' need tests on both sides (e.g. 'red > 1500')")
        return node


def _modality_of(name: str) -> str | None:
    for m in MEANINGS.values():
        if meaning_of_name(name, m.modality) is not None:
            return m.modality
    return None


def _is_test(node: Node) -> bool:
    return node[0] in (*_COMPARE, "and", "or", "not")


def _bands(node: Node) -> list[str]:
    if node[0] == "band":
        return [str(node[1])]
    if node[0] == "num":
        return []
    return [b for child in node[1:] for b in _bands(child)]


@dataclass(frozen=True)
class Rule:
    """A named applicability rule: ``name`` and its expression text (as recorded)."""

    name: str
    expr: str

    @cached_property
    def tree(self) -> Node:
        return _Parser(self.expr).parse()

    @cached_property
    def bands(self) -> tuple[str, ...]:
        """The band meanings the rule reads, in first-use order."""
        return tuple(dict.fromkeys(_bands(self.tree)))

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``NAME=EXPR`` (or ``NAME: EXPR``), checked: a valid name and a valid test."""
        name, sep, expr = text.partition("=") if "=" in text.split(":")[0] else text.partition(":")
        name = name.strip().lower()
        if not sep or not expr.strip() or expr.lstrip().startswith("="):
            raise UsageError(f"rule {text!r}: write NAME=EXPR, e.g. 'snow=red > 1500'")
        return cls.checked(name, expr.strip())

    @classmethod
    def checked(cls, name: str, expr: str) -> Rule:
        if not _NAME.fullmatch(name) or name in _RESERVED:
            raise UsageError(
                f"rule name {name!r}: use lower-case letters, digits, '-' or '_' (not "
                f"{', '.join(sorted(_RESERVED))})"
            )
        rule = cls(name, expr)
        rule.tree  # noqa: B018 - parse now, so a malformed rule fails where it is given
        return rule


def model_rules(meta: ModelMeta) -> list[Rule]:
    """The rules a model record carries, checked against its bands (of a rule with
    alternatives, the one on the model's own bands: see :func:`rule_groups`)."""
    return [group[-1] for group in rule_groups(meta.rules, meta.modalities, meta.arch)]


def rule_groups(
    pairs: Sequence[tuple[str, str]], modalities: Sequence[ModalitySpec], model: str
) -> list[tuple[Rule, ...]]:
    """A record's ``(name, expr)`` rules grouped by name, in record order. Consecutive entries
    of one name are *alternatives*, tried in order: the first whose bands the input holds is
    evaluated. Earlier alternatives may read bands the model does not take (by meaning, of a
    modality it takes: ``green`` = Sentinel-2 B3 beside a B12, B8, B4 model), read from the
    user's input when it holds them; the last one must read only the model's own bands, so
    every rule can always be evaluated."""
    groups: list[list[Rule]] = []
    for name, expr in pairs:
        rule = Rule.checked(name.strip().lower(), expr.strip())
        if groups and groups[-1][0].name == rule.name:
            groups[-1].append(rule)
        elif any(g[0].name == rule.name for g in groups):
            raise UsageError(f"rule {rule.name!r} is given twice; give each rule its own name")
        else:
            groups.append([rule])
    have = band_locations(modalities)
    taken = {s.name for s in modalities}
    for group in groups:
        checked_rules([f"{group[-1].name}={group[-1].expr}"], modalities, model)
        for alt in group[:-1]:
            odd = [b for b in alt.bands if b not in have and MEANINGS[b].modality not in taken]
            if odd:
                raise UsageError(
                    f"rule {alt.name!r} ({alt.expr}) reads {', '.join(odd)}, of a modality "
                    f"model {model} does not take ({', '.join(sorted(taken))})"
                )
    return [tuple(g) for g in groups]


def checked_rules(
    texts: Sequence[str], modalities: Sequence[ModalitySpec], model: str
) -> list[Rule]:
    """``NAME=EXPR`` texts parsed, each reading only bands the model takes, names unique."""
    rules = [Rule.parse(t) for t in texts]
    have = band_locations(modalities)
    seen: set[str] = set()
    for rule in rules:
        missing = [b for b in rule.bands if b not in have]
        if missing:
            names = ", ".join(sorted(have)) or "none with a known meaning"
            raise UsageError(
                f"rule {rule.name!r} reads {', '.join(missing)}, which model {model} does not "
                f"take (its bands: {names})"
            )
        if rule.name in seen:
            raise UsageError(f"rule {rule.name!r} is given twice; give each rule its own name")
        seen.add(rule.name)
    return rules


def band_locations(modalities: Sequence[ModalitySpec]) -> dict[str, tuple[str, int]]:
    """meaning -> (modality, band index) of the model's bands (first one of each meaning)."""
    out: dict[str, tuple[str, int]] = {}
    for spec in modalities:
        for i, meaning in enumerate(spec.meanings):
            if meaning:
                out.setdefault(meaning, (spec.name, i))
    return out


def evaluate(node: Node, bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """A parsed expression on arrays of band values (NaN makes a test false)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _evaluate(node, _as_float64(node, bands))


def _as_float64(node: Node, bands: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bands ``node`` reads, each converted to float64 once (not once per use)."""
    return {k: np.asarray(bands[k], dtype=np.float64) for k in dict.fromkeys(_bands(node))}


def _evaluate(node: Node, bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """:func:`evaluate` on float64 bands, inside the caller's ``np.errstate``."""
    op = node[0]
    if op == "num":
        return np.asarray(node[1], dtype=np.float64)
    if op == "band":
        return bands[str(node[1])]
    if op == "neg":
        return -_evaluate(node[1], bands)
    if op == "not":
        return ~_evaluate(node[1], bands)
    a, b = _evaluate(node[1], bands), _evaluate(node[2], bands)  # type: ignore[misc]
    if op == "/":
        return np.divide(a, b)
    return np.asarray(_BINARY[op](a, b))


_BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "and": np.logical_and,
           "or": np.logical_or, "<": np.less, "<=": np.less_equal, ">": np.greater,
           ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}  # fmt: skip


#: :func:`_pooled`'s functions beside :data:`_BINARY` (each takes ``out=``)
_POOLED_FN = {"neg": np.negative, "not": np.invert, "/": np.divide}

#: ops whose results :class:`_Pool` can hold: float64 arithmetic, tests giving bool
_ARITH = frozenset({"+", "-", "*", "/", "neg"})
_LOGIC = frozenset({"and", "or", "not"})


class _Pool:
    """Work arrays reused by :func:`rule_mask`, one pool per thread.

    Why: the readers check a block's rules a few thousand pixels at a time, and every
    operation of a rule makes a float64 temporary; under the CLI's fixed mmap threshold
    (:func:`~mfaf_cli.malloc.limit_malloc_growth`) glibc gives the freed heap top back to the
    kernel, so every chunk's temporaries were fresh pages again (page faults cost more than
    the arithmetic)."""

    def __init__(self) -> None:
        self._free: dict[tuple[np.dtype[Any], tuple[int, ...]], list[np.ndarray]] = {}
        self._owned: dict[int, np.ndarray] = {}  # by id, held so that no id is reused

    def take(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        free = self._free.get((dtype, shape))
        if free:
            return free.pop()
        a = np.empty(shape, dtype)
        self._owned[id(a)] = a
        return a

    def give(self, a: np.ndarray) -> None:
        """Take back ``a`` if it is one of the pool's (others: bands, numbers, left alone)."""
        if self._owned.get(id(a)) is a:
            self._free.setdefault((a.dtype, a.shape), []).append(a)

    def reset(self, keep: int = 64) -> None:
        """Every array free again (the last result is no longer used); all forgotten when
        there are more than ``keep`` (shapes seen once are not held forever)."""
        if len(self._owned) > keep:
            self._owned.clear()
        self._free = {}
        for arr in self._owned.values():
            self._free.setdefault((arr.dtype, arr.shape), []).append(arr)


_POOLS = threading.local()


def rule_mask(node: Node, bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """:func:`evaluate` of a rule with this thread's reused work arrays: the same values, each
    operation written into an array of :class:`_Pool` (the result too: use it before the
    thread's next call). A float32 band's tests against constants run in float32
    (:func:`_narrow_test`): a band that no arithmetic reads is never copied to float64."""
    pool = getattr(_POOLS, "pool", None)
    if pool is None:
        pool = _POOLS.pool = _Pool()
    pool.reset()
    raw = {k: np.asarray(bands[k]) for k in _band_keys(node)}
    narrow = tuple(k for k, v in raw.items() if v.dtype == np.float32)
    steps = _program(node, narrow)
    f64: dict[str, np.ndarray] = {}
    for k in _wide_keys(node, narrow) if steps else raw:  # each converted once, as asarray
        band = raw[k]
        f64[k] = band if band.dtype == np.float64 else pool.take(np.dtype(np.float64), band.shape)
        if f64[k] is not band:
            np.copyto(f64[k], band, casting="unsafe")
    shapes = {a.shape for a in raw.values()}
    with np.errstate(divide="ignore", invalid="ignore"):
        if steps and len(shapes) == 1:
            return _run(steps, f64, pool, shapes.pop(), raw)
        return _pooled(node, f64, pool)


@functools.lru_cache(maxsize=256)
def _band_keys(node: Node) -> tuple[str, ...]:
    """The bands a rule reads, each once (cached: readers check block after block)."""
    return tuple(dict.fromkeys(_bands(node)))


@dataclass(frozen=True)
class _Step:
    """One operation of a compiled rule: ``fn(*args, out=...)`` into a ``dtype`` pool array.
    An arg is ``("band", key)`` (float64), ``("raw", key)`` (the float32 band as given),
    ``("const", 0-d array)`` or ``("step", index)``; ``frees``: the steps whose results this
    one used last (given back to the pool after it)."""

    fn: Any
    args: tuple[tuple[str, Any], ...]
    dtype: np.dtype[Any]
    frees: tuple[int, ...]


@functools.lru_cache(maxsize=256)
def _program(node: Node, narrow: tuple[str, ...] = ()) -> tuple[_Step, ...] | None:
    """``node`` flattened into :func:`_pooled`'s operations, in its order, with each
    result's dtype decided once: the same arithmetic without walking the tree, testing
    dtypes and broadcasting shapes per block (that bookkeeping was half of a 24k-pixel
    block's cost). ``narrow``: the bands given as float32 (their tests against constants
    run in float32). None where :func:`_pooled` lets numpy pick a dtype, or nothing is
    computed per pixel: :func:`_pooled` runs then."""
    steps: list[_Step] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        root = _compile(node, steps, frozenset(narrow))
    return tuple(steps) if root is not None and root[0] == "step" else None


@functools.lru_cache(maxsize=256)
def _wide_keys(node: Node, narrow: tuple[str, ...]) -> tuple[str, ...]:
    """The bands ``_program(node, narrow)`` reads as float64, each once."""
    steps = _program(node, narrow) or ()
    return tuple(dict.fromkeys(v for s in steps for kind, v in s.args if kind == "band"))


def _compile(node: Node, steps: list[_Step], narrow: frozenset[str]) -> tuple[str, Any] | None:
    """Append ``node``'s steps; its result as an arg (None: not compilable)."""
    op = node[0]
    if op == "num":
        return ("const", np.asarray(node[1], dtype=np.float64))
    if op == "band":
        return ("band", str(node[1]))
    args = [_compile(n, steps, narrow) for n in node[1:]]  # type: ignore[arg-type]
    if any(a is None for a in args):
        return None
    refs = [a for a in args if a is not None]
    fn = _POOLED_FN.get(op) or _BINARY[op]
    if all(kind == "const" for kind, _ in refs):  # as _pooled: a 0-d result, folded once
        return ("const", np.asarray(fn(*(v for _, v in refs))))
    test = _narrow_test(op, refs, narrow) if op in _COMPARE else None
    if test is not None:
        steps.append(test)
        return ("step", len(steps) - 1)
    dtypes = {_arg_dtype(r, steps) for r in refs}
    dtype: np.dtype[Any]
    if op in _LOGIC and dtypes == {np.dtype(bool)}:
        dtype = np.dtype(bool)
    elif op not in _LOGIC and dtypes == {np.dtype(np.float64)}:
        dtype = np.dtype(np.float64) if op in _ARITH else np.dtype(bool)
    else:
        return None
    frees = tuple(v for kind, v in refs if kind == "step")
    steps.append(_Step(fn, tuple(refs), dtype, frees))
    return ("step", len(steps) - 1)


#: a test with its sides swapped: ``c < band`` is ``band > c``
_SWAPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _narrow_test(
    op: str, refs: list[tuple[str, Any]], narrow: frozenset[str]
) -> _Step | None:
    """A test of a float32 band against a float64 constant as a float32 test against a
    float32 threshold with the same outcome for every float32 value (NaN and infinities
    included), or None. ``v > c`` is ``v >`` the greatest float32 <= c (no float32 lies
    between them), ``v >= c`` is ``v >=`` the least float32 >= c, ``<`` and ``<=`` alike;
    ``v == c`` is ``v == float32(c)`` where c is a float32, never true otherwise (a NaN
    threshold: ``!=`` then always true). Why: the band's float64 copy and a float64 pass
    over it cost more than the rest of the test."""
    (ka, va), (kb, vb) = refs
    if ka == "const" and kb == "band":
        op, (ka, va), (kb, vb) = _SWAPPED[op], (kb, vb), (ka, va)
    if not (ka == "band" and va in narrow and kb == "const" and vb.dtype == np.float64):
        return None
    c = float(vb)
    if op in (">", "<="):
        threshold = _float32_below(c)
    elif op in (">=", "<"):
        threshold = _float32_above(c)
    else:
        with np.errstate(over="ignore"):
            f = np.float32(c)
        threshold = f if float(f) == c else np.float32(np.nan)
    const = np.asarray(threshold, dtype=np.float32)
    return _Step(_BINARY[op], (("raw", va), ("const", const)), np.dtype(bool), ())


def _arg_dtype(ref: tuple[str, Any], steps: Sequence[_Step]) -> np.dtype[Any]:
    kind, v = ref
    if kind == "band":
        return np.dtype(np.float64)
    return v.dtype if kind == "const" else steps[v].dtype


def _run(
    steps: Sequence[_Step],
    bands: Mapping[str, np.ndarray],
    pool: _Pool,
    shape: tuple[int, ...],
    raw: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """A compiled rule on float64 ``bands`` (and the ``raw`` bands its float32 tests read)
    of one ``shape``, in ``pool``'s arrays."""
    given = {("band", k): v for k, v in bands.items()}
    given.update({("raw", k): v for k, v in (raw or {}).items()})
    done: list[Any] = [None] * len(steps)
    for i, step in enumerate(steps):
        args = [v if k == "const" else done[v] if k == "step" else given[(k, v)]
                for k, v in step.args]  # fmt: skip
        done[i] = step.fn(*args, out=pool.take(step.dtype, shape))
        for j in step.frees:
            pool.give(done[j])
            done[j] = None
    return done[-1]


def _pooled(node: Node, bands: Mapping[str, np.ndarray], pool: _Pool) -> np.ndarray:
    """:func:`_evaluate` with results in ``pool``'s arrays where the result's dtype is known
    (float64 arithmetic on float64, tests and logic on bool); elsewhere as it computes."""
    op = node[0]
    if op in ("num", "band"):
        return _evaluate(node, bands)
    args = [_pooled(n, bands, pool) for n in node[1:]]  # type: ignore[arg-type]
    fn = _POOLED_FN.get(op) or _BINARY[op]
    dtypes = {a.dtype for a in args}
    dtype: np.dtype[Any]
    if op in _LOGIC and dtypes == {np.dtype(bool)}:
        dtype = np.dtype(bool)
    elif op not in _LOGIC and dtypes == {np.dtype(np.float64)}:
        dtype = np.dtype(np.float64) if op in _ARITH else np.dtype(bool)
    else:  # anything else (bool arithmetic, tests of tests): numpy picks the dtype
        return np.asarray(fn(*args))
    shape = np.broadcast_shapes(*(a.shape for a in args))
    if not shape:
        return np.asarray(fn(*args))
    out = fn(*args, out=pool.take(dtype, shape))
    for child, a in zip(node[1:], args, strict=True):
        if child[0] != "band":  # the bands serve the whole rule
            pool.give(a)
    return out


# ---- training range ---------------------------------------------------------------------
def training_range(
    arrays: Sequence[np.ndarray], seed: int = 0, max_samples: int = 2_000_000
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """Per-band pooled :data:`RANGE_QUANTILES` of the finite values of (C, H, W) arrays (a
    seeded subsample of at most ``max_samples`` per band): ``(range_low, range_high,
    range_open)``. A side is open when the quantile there is the data's extreme value itself
    (at least 0.1 % of the values pile up on it: a saturated product, e.g. an 8-bit PNG at 0
    or 255)."""
    rng = np.random.default_rng(seed)
    lows, highs, opens = [], [], []
    for i in range(arrays[0].shape[0]):
        v = np.concatenate([np.asarray(a[i]).reshape(-1) for a in arrays]).astype(np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            v = np.zeros(1)
        if v.size > max_samples:
            v = rng.choice(v, max_samples, replace=False)
        lo, hi = (float(q) for q in np.percentile(v, RANGE_QUANTILES))
        low_open = lo == v.min() and np.mean(v == lo) >= RANGE_QUANTILES[0] / 100
        high_open = hi == v.max() and np.mean(v == hi) >= 1 - RANGE_QUANTILES[1] / 100
        lows.append(lo)
        highs.append(hi)
        opens.append({(True, True): "both", (True, False): "low", (False, True): "high"}.get(
            (bool(low_open), bool(high_open)), ""))  # fmt: skip
    return tuple(lows), tuple(highs), tuple(opens)


def noise_floors(meanings: Sequence[str], units: str) -> tuple[float | None, ...]:
    """Per band, the sensor noise floor in the band's units (:data:`NOISE_FLOOR_DB` for SAR
    backscatter in dB, its power for ``linear``; None elsewhere); () when no band has one."""
    scale = {"db": lambda v: v, "linear": lambda v: 10 ** (v / 10)}.get(units.lower())
    out = tuple(
        None if scale is None or m not in NOISE_FLOOR_DB else float(scale(NOISE_FLOOR_DB[m]))
        for m in meanings
    )
    return out if any(v is not None for v in out) else ()


def with_noise_floor(spec: ModalitySpec) -> ModalitySpec:
    """``spec`` with :func:`noise_floors` recorded beside its training range (when it has one;
    SAR units default to dB, as everywhere)."""
    if spec.range_low is None:
        return spec
    units = spec.units or DEFAULT_UNITS.get(spec.name, "")
    return dataclasses.replace(spec, range_floor=noise_floors(spec.meanings, units))


def outside_range(
    arr: np.ndarray,
    low: Sequence[float],
    high: Sequence[float],
    open_: Sequence[str] = (),
    floor: Sequence[float | None] = (),
) -> np.ndarray:
    """(h, w) bool: any band of ``arr`` (C, h, w) leaves ``[low, high]`` by more than
    :data:`RANGE_MARGIN` of the band's span, on a side that is not open (NaN is not flagged:
    it is nodata). A band's values below its ``floor`` (sensor noise) count as the floor."""
    c = arr.shape[0]
    floors = [None if f is None else float(f) for f in (list(floor) or [None] * c)]
    sides = list(open_) or [""] * c
    out = np.zeros(arr.shape[1:], dtype=bool)
    for b, (lo, hi) in enumerate(_limits(low, high, sides)):
        _flag_band(out, arr[b], lo, hi, floors[b])
    return out


def _limits(
    low: Sequence[float], high: Sequence[float], sides: Sequence[str]
) -> list[tuple[float, float]]:
    """Per band, the float64 limits a value must stay within (the margin applied; an open
    side infinite)."""
    out = []
    for lo, hi, side in zip(low, high, sides, strict=False):
        m = RANGE_MARGIN * max(float(hi) - float(lo), 0.0)
        out.append((-np.inf if side in ("low", "both") else float(lo) - m,
                    np.inf if side in ("high", "both") else float(hi) + m))  # fmt: skip
    return out


def _flag_band(
    out: np.ndarray, band: np.ndarray, lo: float, hi: float, floor: float | None
) -> None:
    """``out |= band leaves (lo, hi)``, with values below ``floor`` read as the floor."""
    bounds = _band_bounds(lo, hi, floor, band.dtype == np.float32)
    if bounds is None:
        out |= ~np.isnan(band)
        return
    lo_t, hi_t = bounds
    with np.errstate(invalid="ignore"):
        if lo_t > -np.inf:  # nothing is below -inf (NaN neither): an open side costs no pass
            out |= band < lo_t
        if hi_t < np.inf:
            out |= band > hi_t


@functools.lru_cache(maxsize=256)
def _band_bounds(
    lo: float, hi: float, floor: float | None, float32: bool
) -> tuple[np.floating[Any], np.floating[Any]] | None:
    """The thresholds :func:`_flag_band` compares a band with (None: every value that is not
    NaN is flagged); cached, as readers check block after block against the same limits.

    Floors: ``max(v, f) < lo`` is ``v < lo and f < lo``; ``max(v, f) > hi`` is ``v > hi or
    f > hi``. A float32 band is compared in float32 against the limits rounded outwards to
    float32 (``v < lo`` exactly when ``v <`` the least float32 >= ``lo``): the float64
    comparison's result without a float64 copy of the band."""
    if floor is not None:
        if not floor < lo:
            lo = -np.inf
        if floor > hi:
            return None
    if float32:
        return _float32_above(lo), _float32_below(hi)
    return np.float64(lo), np.float64(hi)


def _float32_above(x: float) -> np.float32:
    """The least float32 >= ``x`` (inf above float32's range)."""
    with np.errstate(over="ignore"):
        f = np.float32(x)
    return np.nextafter(f, np.float32(np.inf)) if float(f) < x else f


def _float32_below(x: float) -> np.float32:
    """The greatest float32 <= ``x`` (-inf below float32's range)."""
    with np.errstate(over="ignore"):
        f = np.float32(x)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > x else f


# ---- reason codes -----------------------------------------------------------------------
@dataclass(frozen=True)
class Checks:
    """What can be checked for one model: its ranges, its rules (each a tuple of alternatives,
    see :func:`rule_groups`) and where each band meaning is found in the raw arrays."""

    #: modality -> (range_low, range_high, range_open, range_floor)
    ranges: Mapping[str, tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...],
                               tuple[float | None, ...]]]  # fmt: skip
    groups: Sequence[tuple[Rule, ...]]
    #: meaning -> (key of the raw arrays, band index): the model's bands, plus the extra bands
    #: of the input that :meth:`with_bands` added
    locations: Mapping[str, tuple[str, int]]

    @classmethod
    def of(cls, meta: ModelMeta) -> Checks:
        ranges = {s.name: (s.range_low, s.range_high, s.range_open, s.range_floor)
                  for s in meta.modalities
                  if s.range_low is not None and s.range_high is not None}  # fmt: skip
        groups = rule_groups(meta.rules, meta.modalities, meta.arch)
        return cls(ranges, groups, band_locations(meta.modalities))

    @property
    def empty(self) -> bool:
        return not self.ranges and not self.groups

    @cached_property
    def rules(self) -> list[Rule]:
        """Per rule name, the alternative that runs: the first whose bands are all located
        (cached: the readers evaluate the checks block by block)."""
        return [next(r for r in g if all(b in self.locations for b in r.bands) or r is g[-1])
                for g in self.groups]  # fmt: skip

    @property
    def extra_bands(self) -> list[str]:
        """Meanings that earlier alternatives read and the model does not take."""
        return list(
            dict.fromkeys(
                b for g in self.groups for r in g for b in r.bands if b not in self.locations
            )
        )

    def with_bands(self, extra: Mapping[str, tuple[str, int]]) -> Checks:
        """These checks with more located bands (the input's own extra bands)."""
        return dataclasses.replace(self, locations={**extra, **self.locations})

    def alternatives(self) -> dict[str, dict[str, Any]]:
        """Which alternative of each rule runs: ``{name: {"expr", "alternative", "of"}}``."""
        return {r.name: {"expr": r.expr, "alternative": g.index(r) + 1, "of": len(g)}
                for g, r in zip(self.groups, self.rules, strict=True)}  # fmt: skip

    @property
    def reasons(self) -> list[str]:
        """Name of each code: ``["ok", "outside-training-range", <rule names>...]``."""
        return ["ok", RANGE_REASON, *(g[0].name for g in self.groups)]

    def codes(self, raw: Mapping[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
        """uint8 reason codes (h, w) of raw arrays (modality -> (C, h, w), sensor units)."""
        out = self.pixel_codes(raw, valid.shape)
        out[~valid] = NODATA
        return out

    def pixel_codes(self, raw: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """:meth:`codes` of every pixel as if valid: a pixel's code depends on its own raw
        values alone, so readers compute it as they read, and the sink marks nodata later."""
        flagged = np.zeros(shape, dtype=bool)
        for name, (low, high, open_, floor) in self.ranges.items():
            flagged |= outside_range(raw[name], low, high, open_, floor)
        out = flagged.view(np.uint8)  # False/True are the bytes 0/1: OK/OUT_OF_RANGE
        rules = self.rules
        bands = {k: raw[m][i] for k, (m, i) in self.locations.items() if m in raw}
        for code in range(len(rules) + 1, 1, -1):  # the first matching rule wins
            np.copyto(out, np.uint8(code), where=rule_mask(rules[code - 2].tree, bands))
        return out


def fractions(counts: np.ndarray, reasons: Sequence[str]) -> dict[str, float]:
    """Excluded fraction of valid pixels per reason (``counts``: pixels per code, 256 bins)."""
    n_valid = int(counts[:NODATA].sum())
    return {name: (float(counts[code]) / n_valid if n_valid else 0.0)
            for code, name in enumerate(reasons) if code != OK}  # fmt: skip


def summary(counts: np.ndarray, reasons: Sequence[str]) -> dict[str, Any]:
    """``{"excluded": total fraction, "reasons": {name: fraction}, "codes": {code: name}}``."""
    fr = fractions(counts, reasons)
    return {
        "excluded": round(sum(fr.values()), 6),
        "reasons": {k: round(v, 6) for k, v in fr.items()},
        "codes": {str(c): n for c, n in enumerate(reasons)} | {str(NODATA): "nodata"},
    }
