"""Feature sets: which indicators, with which parameters, become which stored columns.

A feature set (config ``[[features]]``) is a name, the timeframes it is computed on and a list
of indicators ``{kind, params, name?}``. :func:`feature_set` validates one and lays out its
columns; every refusal is a :class:`SpecError` naming the key below the set
(``indicators[2].params.period``), which ``shared.config`` prefixes with ``features[i].``.

Columns
-------
Each indicator has a label (``name`` if given, else ``kind`` and its parameter values:
``sma_20``, ``macd_12_26_9``) and one column per output: ``LABEL`` for a single output, else
``LABEL.OUTPUT`` (``macd_12_26_9.signal``). Recursive indicators also store their hidden state
(``rsi_14.avg_gain``, ``macd_12_26_9.ema_fast``): with them the state at any bar past the
warm-up is read back from the stored row instead of recomputed from the first bar
(``engine.state_at``). Columns are in indicator order, outputs then hidden state.

``KINDS`` is the catalogue: per kind its parameters (defaults, checks), outputs, hidden state,
how far back it reads (``lookback``: bars including the current one), the first bar index at
which its outputs are valid (``first_valid``), and ``horizon``: the first index from which its
whole state is in its stored columns (-1: no state).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

from barstream.shared.errors import BarstreamError

if TYPE_CHECKING:
    from barstream.shared.config import FeatureSetConfig

GROUP_VALUES: Final = 6  # float64 values per 64-byte feature record (layout.py)


class SpecError(BarstreamError):
    """A bad feature-set definition: ``key`` (below the set) = ``value``: ``why``."""

    def __init__(self, key: str, value: object, why: str) -> None:
        super().__init__(f"{key} = {value!r}: {why}")
        self.key, self.value, self.why = key, value, why


P = Mapping[str, Any]


def _int(lo: int) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        return None if v >= lo else f"must be >= {lo}"

    return check


def _pos_float(v: object) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "must be a number"
    return None if v > 0 and v == v and v != float("inf") else "must be a finite number > 0"


def _choice(*options: str) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}"

    return check


@dataclass(frozen=True)
class Kind:
    code: int
    params: tuple[tuple[str, object, Callable[[object], str | None]], ...]
    outputs: tuple[str, ...]
    hidden: tuple[str, ...]
    #: (ints[4], floats[2]) the kernel reads, from the checked params
    encode: Callable[[P], tuple[tuple[int, ...], tuple[float, ...]]]
    lookback: Callable[[P], int]
    first_valid: Callable[[P], int]
    horizon: Callable[[P], int]
    #: column (within the indicator) holding each state slot, past the horizon
    state_cols: tuple[int, ...] = ()
    check: Callable[[P], tuple[str, str] | None] = lambda p: None


def _n(p: P) -> int:
    return int(p["period"])


def NONE(p: P) -> int:
    return -1


PERIOD = ("period", 14, _int(1))
KINDS: Final[dict[str, Kind]] = {
    "returns": Kind(
        1, (("period", 1, _int(1)),), ("simple", "log"), (),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1, _n, NONE,
    ),
    "sma": Kind(
        2, (("period", 20, _int(1)),), ("value",), (),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), _n, lambda p: _n(p) - 1, NONE,
    ),
    "ema": Kind(
        3, (("period", 20, _int(1)),), ("value",), (),
        lambda p: ((_n(p), 0, 0, 0), (2.0 / (_n(p) + 1), 0.0)), _n, lambda p: _n(p) - 1,
        lambda p: _n(p) - 1, (0,),
    ),
    "wma": Kind(
        4, (("period", 20, _int(1)),), ("value",), (),
        lambda p: ((_n(p), 0, 0, 0), (_n(p) * (_n(p) + 1) / 2.0, 0.0)), _n,
        lambda p: _n(p) - 1, NONE,
    ),
    "rsi": Kind(
        5, (PERIOD,), ("value",), ("avg_gain", "avg_loss"),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1, _n, _n, (1, 2),
    ),
    "macd": Kind(
        6, (("fast", 12, _int(1)), ("slow", 26, _int(2)), ("signal", 9, _int(1))),
        ("line", "signal", "hist"), ("ema_fast", "ema_slow"),
        lambda p: (
            (int(p["fast"]), int(p["slow"]), int(p["signal"]), 0),
            (2.0 / (int(p["fast"]) + 1), 2.0 / (int(p["slow"]) + 1)),
        ),
        lambda p: int(p["slow"]), lambda p: int(p["slow"]) + int(p["signal"]) - 2,
        lambda p: int(p["slow"]) + int(p["signal"]) - 2, (3, 4, 1),
        lambda p: None if p["fast"] < p["slow"] else ("fast", "must be < slow"),
    ),
    "bbands": Kind(
        7, (("period", 20, _int(2)), ("k", 2.0, _pos_float)), ("mid", "upper", "lower", "pctb"),
        (), lambda p: ((_n(p), 0, 0, 0), (float(p["k"]), 0.0)), _n, lambda p: _n(p) - 1, NONE,
    ),
    "atr": Kind(
        8, (PERIOD,), ("value",), (), lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)),
        lambda p: _n(p) + 1, _n, _n, (0,),
    ),
    "stoch": Kind(
        9, (("k", 14, _int(1)), ("d", 3, _int(1))), ("k", "d"), (),
        lambda p: ((int(p["k"]), int(p["d"]), 0, 0), (0.0, 0.0)),
        lambda p: int(p["k"]) + int(p["d"]) - 1, lambda p: int(p["k"]) - 1, NONE,
    ),
    "willr": Kind(
        10, (PERIOD,), ("value",), (), lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), _n,
        lambda p: _n(p) - 1, NONE,
    ),
    "cci": Kind(
        11, (("period", 20, _int(2)), ("constant", 0.015, _pos_float)), ("value",), (),
        lambda p: ((_n(p), 0, 0, 0), (float(p["constant"]), 0.0)), _n, lambda p: _n(p) - 1,
        NONE,
    ),
    "roc": Kind(
        12, (("period", 10, _int(1)),), ("roc", "momentum"), (),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1, _n, NONE,
    ),
    "volatility": Kind(
        13, (("period", 20, _int(2)), ("ddof", 1, _int(0))), ("value",), (),
        lambda p: ((_n(p), int(p["ddof"]), 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1, _n, NONE,
        (), lambda p: None if p["ddof"] in (0, 1) else ("ddof", "must be 0 or 1"),
    ),
    "zscore": Kind(
        14, (("period", 20, _int(2)), ("ddof", 1, _int(0))), ("value",), (),
        lambda p: ((_n(p), int(p["ddof"]), 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1, _n, NONE,
        (), lambda p: None if p["ddof"] in (0, 1) else ("ddof", "must be 0 or 1"),
    ),
    "donchian": Kind(
        15, (("period", 20, _int(1)),), ("upper", "lower", "mid"), (),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), _n, lambda p: _n(p) - 1, NONE,
    ),
    "obv": Kind(
        16, (), ("value",), (), lambda p: ((0, 0, 0, 0), (0.0, 0.0)), lambda p: 2,
        lambda p: 0, lambda p: 0, (0,),
    ),
    "vwap": Kind(
        17, (("anchor", "utc_day", _choice("utc_day", "session")),), ("value",),
        ("cum_pv", "cum_v"), lambda p: ((int(p["anchor"] == "session"), 0, 0, 0), (0.0, 0.0)),
        lambda p: 2,
        lambda p: 0, lambda p: 0, (1, 2),
    ),
    "adx": Kind(
        18, (PERIOD,), ("adx", "plus_di", "minus_di"), ("tr_sum", "plus_dm_sum", "minus_dm_sum"),
        lambda p: ((_n(p), 0, 0, 0), (0.0, 0.0)), lambda p: _n(p) + 1,
        lambda p: 2 * _n(p) - 1, lambda p: 2 * _n(p) - 1, (3, 4, 5, 0),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Indicator:
    kind: str
    params: dict[str, object]  # every parameter, defaults filled
    label: str
    columns: tuple[str, ...]  # full column names, outputs then hidden
    n_outputs: int

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]


@dataclass(frozen=True)
class FeatureSet:
    """A validated feature set: its indicators and the column layout of its store (the
    derived values are computed once: they are read for every bar)."""

    name: str
    timeframes: tuple[str, ...]
    indicators: tuple[Indicator, ...]

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for ind in self.indicators for c in ind.columns)

    @cached_property
    def outputs(self) -> tuple[str, ...]:
        """The feature columns a consumer sees (hidden state left out)."""
        return tuple(c for ind in self.indicators for c in ind.columns[: ind.n_outputs])

    @cached_property
    def n_groups(self) -> int:
        """64-byte records per bar (``GROUP_VALUES`` columns each)."""
        return max(1, -(-len(self.columns) // GROUP_VALUES))

    @cached_property
    def lookback(self) -> int:
        """Bars (the current one included) any indicator reads: the tail a state keeps."""
        return max([ind.spec.lookback(ind.params) for ind in self.indicators] + [2])

    @cached_property
    def horizon(self) -> int:
        """The first bar index from which every indicator's state is in its stored columns."""
        return max([ind.spec.horizon(ind.params) for ind in self.indicators] + [-1])

    @cached_property
    def crc(self) -> int:
        """crc32 of the canonical definition (stored in every record: which columns)."""
        text = ";".join(
            f"{ind.kind}({','.join(f'{k}={ind.params[k]!r}' for k in sorted(ind.params))})"
            f"->{','.join(ind.columns)}"
            for ind in self.indicators
        )
        return zlib.crc32(text.encode())


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def indicator(index: int, kind: object, params: Mapping[str, object], name: str = "") -> Indicator:
    """One checked indicator (``index`` names it in errors: ``indicators[index]``)."""
    key = f"indicators[{index}]"
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError(f"{key}.kind", kind, f"unknown kind (known: {', '.join(sorted(KINDS))})")
    spec = KINDS[kind]
    known = {p[0] for p in spec.params}
    for k in params:
        if k not in known:
            why = (
                f"not a parameter of {kind} (its parameters: {', '.join(sorted(known)) or 'none'})"
            )
            raise SpecError(f"{key}.params.{k}", params[k], why)
    full: dict[str, object] = {}
    for pname, default, check in spec.params:
        value = params.get(pname, default)
        bad_value = check(value)
        if bad_value:
            raise SpecError(f"{key}.params.{pname}", value, bad_value)
        full[pname] = value
    bad = spec.check(full)
    if bad:
        raise SpecError(f"{key}.params.{bad[0]}", full[bad[0]], bad[1])
    if name and not _NAME.match(name):
        raise SpecError(f"{key}.name", name, "lowercase letters, digits and _, first a letter")
    label = name or "_".join([kind, *(str(full[p[0]]) for p in spec.params)])
    label = label.replace(".", "p")
    names = spec.outputs + spec.hidden
    cols = (label,) if len(names) == 1 else tuple(f"{label}.{o}" for o in names)
    return Indicator(kind, full, label, cols, len(spec.outputs))


def feature_set(
    name: str, timeframes: Sequence[str], indicators: Sequence[Mapping[str, Any]]
) -> FeatureSet:
    """A checked FeatureSet from config-shaped data (``indicators`` as ``{kind, params, name}``)."""
    if not _NAME.match(name):
        raise SpecError("name", name, "lowercase letters, digits and _, first a letter")
    if not indicators:
        raise SpecError("indicators", list(indicators), "list at least one indicator")
    out: list[Indicator] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(indicators):
        ind = indicator(i, spec.get("kind"), spec.get("params") or {}, str(spec.get("name") or ""))
        if ind.label in seen:
            why = f"same column label as indicators[{seen[ind.label]}] (give one a name)"
            raise SpecError(f"indicators[{i}]", ind.label, why)
        seen[ind.label] = i
        out.append(ind)
    return FeatureSet(name, tuple(timeframes), tuple(out))


def from_config(cfg: FeatureSetConfig) -> FeatureSet:
    """The FeatureSet of a ``[[features]]`` table (already validated by ``shared.config``)."""
    items = [{"kind": i.kind, "params": i.params, "name": i.name} for i in cfg.indicators]
    return feature_set(cfg.name, cfg.timeframes, items)
