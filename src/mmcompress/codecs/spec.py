"""Codec spec strings and the registry of their building blocks.

A spec composes a codec the way faiss ``index_factory`` does: comma-separated transform
tokens followed by exactly one quantizer token, e.g. ``"PCA128,OPQ16,PQ16x8"``. Each token
is matched in full against the regular expressions registered here; the first registered
pattern that matches builds the piece. ``make_codec("auto", budget_bytes=B)`` searches the
candidate specs that registered quantizers offer for B and for smaller sizes (the budget is an
upper bound).

Built-in tokens (see the modules named):

==========================  ==============================================  =================
token                       meaning                                         module
==========================  ==============================================  =================
``C``                       centring                                        transforms
``W``, ``PCAW<d>``          PCA whitening (all dims / first ``d``)          transforms
``PCA``, ``PCA<d>``         PCA rotation / projection to ``d`` dims         transforms
``RR``                      random orthogonal rotation                      transforms
``OPQ<M>``, ``OPQ<M>_<d>``  learned OPQ rotation for ``M`` sub-spaces       transforms
``FP16 SQ8 SQ6 SQ4``        uniform scalar codes, per-dimension ranges      scalar
``NUQ<B>``, ``NUQ<B>_e<l>`` Lloyd-Max levels, greedy bit allocation, B      nonuniform
                            bytes, optional entropy weight ``l``
``PQ<M>x<b>``               product quantizer                               faiss_quantizers
``RQ<M>x<b>``, ``_b<w>``    residual quantizer, beam width ``w``            faiss_quantizers
``RQ<M>x8_r<n>``            the same, codebooks refined jointly ``n`` times  faiss_quantizers
``LSQ<M>x<b>``              local search (additive) quantizer               faiss_quantizers
``BIN<bits>``, ``_rr``      sign bits after ITQ (or random) rotation        binary
``BIN<bits>_f16``           the same, projection held in float16            binary
``BIN<bits>_i8``            the same, projection in int8 times one scale   binary
==========================  ==============================================  =================

Adding a codec family (this is how :mod:`mmcompress.codecs.learned` plugs in, without
editing this parser)::

    import re
    from mmcompress.codecs.base import Codec
    from mmcompress.codecs.spec import SpecContext, register_quantizer

    class QincoCodec(Codec):
        kind = "qinco"                      # the name saved files record
        ...

    def build_qinco(m: re.Match[str], ctx: SpecContext) -> Codec:
        return QincoCodec(M=int(m["M"]), nbits=int(m["nbits"]), metric=ctx.metric,
                          random_state=ctx.random_state)

    def qinco_candidates(budget_bytes: int, d: int, metric: str) -> list[str]:
        return [f"QINCO{budget_bytes}x8"] if budget_bytes <= 32 else []

    register_quantizer(r"QINCO(?P<M>\\d+)x(?P<nbits>\\d+)", build_qinco,
                       auto_candidates=qinco_candidates)

After that ``make_codec("QINCO16x8")``, ``make_codec("PCA256,QINCO16x8")`` and
``load_codec(path)`` work, and ``make_codec("auto", budget_bytes=16)`` tries
``"QINCO16x8"`` alongside the built-in candidates. A codec's ``spec`` property must return
a token string that its factory parses back. ``register_transform`` does the same for
transforms (factories return a :class:`mmcompress.codecs.transforms.Transform`).

When a token is unknown, the parser imports :mod:`mmcompress.codecs.learned` once (so its
registrations run) before giving up; loading a saved learned codec therefore needs no
explicit import.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmcompress.errors import CodecError

if TYPE_CHECKING:
    from mmcompress.codecs.base import Codec
    from mmcompress.codecs.transforms import Transform

__all__ = [
    "AutoCandidates",
    "SpecContext",
    "auto_candidates",
    "make_codec",
    "parse_spec",
    "register_quantizer",
    "register_transform",
    "registered_tokens",
    "unregister",
]

#: ``(budget_bytes, d, metric) -> specs`` that fit exactly ``budget_bytes`` bytes per item.
AutoCandidates = Callable[[int, int, str], Sequence[str]]


@dataclass(frozen=True)
class SpecContext:
    """What a factory may use besides its token: the metric, the seed and free options.

    ``options`` carries keyword arguments given to :func:`make_codec` (for example
    ``beam=16`` or ``max_train_rows=20000``); a factory reads the ones it knows.
    """

    metric: str = "ip"
    random_state: int = 0
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str]
    factory: Callable[[re.Match[str], SpecContext], Any]
    auto_candidates: AutoCandidates | None = None


_QUANTIZERS: list[_Entry] = []
_TRANSFORMS: list[_Entry] = []
_PLUGINS = ("mmcompress.codecs.learned",)
_plugins_loaded = False


def _register(table: list[_Entry], pattern: str, factory: Callable, auto: AutoCandidates | None) -> None:
    compiled = re.compile(pattern)
    for i, entry in enumerate(table):
        if entry.pattern.pattern == pattern:
            table[i] = _Entry(compiled, factory, auto)  # re-registration (module reload) replaces
            return
    table.append(_Entry(compiled, factory, auto))


def register_quantizer(pattern: str, factory: Callable[[re.Match[str], SpecContext], Codec], *,
                       auto_candidates: AutoCandidates | None = None) -> None:
    """Register a quantizer token: ``pattern`` (full match) -> ``factory(match, ctx) -> Codec``.

    ``auto_candidates(budget_bytes, d, metric)``, when given, lists complete specs (transforms
    included) of this family that ``make_codec("auto", ...)`` should try for a byte budget;
    each must produce codes of exactly ``budget_bytes`` bytes. The auto search treats its
    budget as an upper bound: it also asks each family for the smaller sizes it tries
    (:meth:`mmcompress.codecs.auto.AutoCodec.candidate_sizes`), so a family answers for
    whatever size it is asked.
    """
    _register(_QUANTIZERS, pattern, factory, auto_candidates)


def register_transform(pattern: str, factory: Callable[[re.Match[str], SpecContext], Transform]) -> None:
    """Register a transform token: ``pattern`` (full match) -> ``factory(match, ctx) -> Transform``."""
    _register(_TRANSFORMS, pattern, factory, None)


def unregister(pattern: str) -> bool:
    """Remove a registered quantizer or transform pattern; True if one was removed."""
    removed = False
    for table in (_QUANTIZERS, _TRANSFORMS):
        keep = [e for e in table if e.pattern.pattern != pattern]
        removed |= len(keep) != len(table)
        table[:] = keep
    return removed


def registered_tokens() -> dict[str, list[str]]:
    """The registered token patterns, for error messages and documentation."""
    _ensure_builtins()
    return {"transforms": [e.pattern.pattern for e in _TRANSFORMS],
            "quantizers": [e.pattern.pattern for e in _QUANTIZERS]}


def auto_candidates(budget_bytes: int, d: int, metric: str) -> list[str]:
    """All candidate specs the registered families offer for a budget, in registration order."""
    _ensure_builtins()
    _load_plugins()
    specs: list[str] = []
    for entry in _QUANTIZERS:
        if entry.auto_candidates is not None:
            for spec in entry.auto_candidates(budget_bytes, d, metric):
                if spec not in specs:
                    specs.append(spec)
    return specs


def _ensure_builtins() -> None:
    # The built-in modules register themselves on import; importing the package does it.
    importlib.import_module("mmcompress.codecs")


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in _PLUGINS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise


def _match(table: list[_Entry], token: str) -> tuple[_Entry, re.Match[str]] | None:
    for entry in table:
        m = entry.pattern.fullmatch(token)
        if m is not None:
            return entry, m
    return None


def parse_spec(spec: str) -> tuple[list[tuple[_Entry, re.Match[str]]], tuple[_Entry, re.Match[str]]]:
    """Split a spec into matched transform tokens and the final quantizer token."""
    _ensure_builtins()
    if not isinstance(spec, str) or not spec.strip():
        raise CodecError(f"codec spec must be a non-empty string; found {spec!r}")
    tokens = [t.strip() for t in spec.split(",")]
    if any(not t for t in tokens):
        raise CodecError(f"codec spec {spec!r} has an empty token")

    def find(table: list[_Entry], token: str) -> tuple[_Entry, re.Match[str]] | None:
        hit = _match(table, token)
        if hit is None and not _plugins_loaded:
            _load_plugins()
            hit = _match(table, token)
        return hit

    transforms = []
    for token in tokens[:-1]:
        hit = find(_TRANSFORMS, token)
        if hit is None:
            where = "a quantizer, which must come last" if _match(_QUANTIZERS, token) else "unknown"
            raise CodecError(f"codec spec {spec!r}: transform token {token!r} is {where}; "
                             f"known transforms: {[e.pattern.pattern for e in _TRANSFORMS]}")
        transforms.append(hit)
    quantizer = find(_QUANTIZERS, tokens[-1])
    if quantizer is None:
        what = ("a transform; a spec must end with a quantizer"
                if _match(_TRANSFORMS, tokens[-1]) else "unknown")
        raise CodecError(f"codec spec {spec!r}: quantizer token {tokens[-1]!r} is {what}; "
                         f"known quantizers: {[e.pattern.pattern for e in _QUANTIZERS]}")
    return transforms, quantizer


def make_codec(spec: str, metric: str = "ip", *, budget_bytes: int | None = None,
               random_state: int = 0, progress: bool = False, **options: Any) -> Codec:
    """Build an unfitted codec from a spec string, or ``"auto"`` with ``budget_bytes``.

    ``options`` reach the factories through :class:`SpecContext` (and the auto search:
    ``candidates``, ``n_queries``, ``max_train_rows``, ``min_encode_per_s`` ...);
    ``norm_weight`` fixes the inner-product norm weight instead of tuning it at fit.
    """
    from mmcompress.codecs.base import METRICS

    if metric not in METRICS:
        raise CodecError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        from mmcompress.codecs.auto import AutoCodec

        if budget_bytes is None:
            raise CodecError('make_codec("auto") needs budget_bytes (bytes per item)')
        return AutoCodec(budget_bytes=budget_bytes, metric=metric, random_state=random_state,
                         progress=progress, **options)
    norm_weight = options.pop("norm_weight", None)
    ctx = SpecContext(metric=metric, random_state=random_state, progress=progress, options=options)
    transform_hits, (q_entry, q_match) = parse_spec(spec)
    quantizer = q_entry.factory(q_match, ctx)
    codec = quantizer
    if transform_hits:
        from mmcompress.codecs.pipeline import TransformedCodec

        transforms = [entry.factory(m, ctx) for entry, m in transform_hits]
        codec = TransformedCodec(transforms, quantizer, metric=metric)
    if norm_weight is not None:
        codec.norm_weight = float(norm_weight)
    if budget_bytes is not None and _static_code_size(codec) not in (None, budget_bytes):
        raise CodecError(f"codec spec {spec!r} makes {_static_code_size(codec)}-byte codes, "
                         f"not the requested budget_bytes={budget_bytes}")
    return codec


def _static_code_size(codec: Codec) -> int | None:
    try:
        return codec.code_size
    except (CodecError, AttributeError):
        return None
