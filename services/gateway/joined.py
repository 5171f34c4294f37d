"""Bars joined with their features, for consumers (no I/O).

A feature topic ``SYMBOL/SIDE/TF.SET`` is a series of records in which each bar record is
followed by its ``G`` feature records (docs/FORMAT.md §11). A consumer wants rows: the bar's
fields and one column per output of the set. ``joined`` builds those rows from whole bars;
``Joiner`` turns the record-level items of a feature topic's ``Follower`` (which may start
and end inside a bar: a change is handed on from its first differing record, a long change
may be committed in parts) into bar-level ``FeatureBarUpdate`` items.

Why every row is consistent: the gateway's replica and the follower's copy are at every
moment a prefix of a state the features stage committed (each change says "from offset X
the series now reads R", nothing after it), and that stage writes a bar and its features in
one change. So the whole bars of the copy are bars with their own features; the last bar is
handed on only once all its records are there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import numpy as np

from barstream.services.features import layout
from barstream.services.gateway.follower import BarUpdate, Position
from barstream.shared import gateway_protocol as gp
from barstream.shared.record import RECORD_DTYPE

log = logging.getLogger("barstream.gateway.client")

#: The bar fields a joined row carries, before the feature columns.
BAR_FIELDS: Final = ("ts_ms", "open", "high", "low", "close", "volume", "flags")


def described(info: gp.FeatureInfo) -> layout.Described:
    return layout.Described(
        info.name, tuple(info.columns), tuple(info.outputs), info.groups, info.crc
    )


def joined_dtype(schema: layout.Described) -> np.dtype:
    """Rows of bars joined with their features: the bar fields, then one float64 per output
    (NaN where the value is not valid yet: warm-up)."""
    fields: list[tuple[str, str]] = [(f, RECORD_DTYPE.fields[f][0].str) for f in BAR_FIELDS]  # type: ignore[index]
    return np.dtype(fields + [(c, "<f8") for c in schema.outputs])


def whole_bars(records: np.ndarray, stride: int) -> tuple[int, int]:
    """The span ``[lo, hi)`` of ``records`` (a feature topic's records in time order, as a
    history answer gives them) covering whole bars: a run of one ``ts_ms`` of ``stride``
    records; a run cut at either end (a page or replica ending inside a bar) is left out."""
    n = len(records)
    if not n:
        return 0, 0
    ts = records["ts_ms"]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    ends = np.r_[starts[1:], n]
    full = np.flatnonzero(ends - starts == stride)
    if not len(full):
        return 0, 0
    return int(starts[full[0]]), int(ends[full[-1]])


def joined(schema: layout.Described, records: np.ndarray, *, first_bar: int = 0) -> np.ndarray:
    """Whole bars of a feature topic's records → joined rows (``joined_dtype``)."""
    bars, feats = layout.split(schema, records, first_bar=first_bar)
    out = np.empty(len(bars), joined_dtype(schema))
    for f in BAR_FIELDS:
        out[f] = bars[f]
    for c in schema.outputs:
        out[c] = feats.column(c)
    return out


@dataclass(frozen=True)
class FeatureBarUpdate(BarUpdate):
    """ "From bar ``start_offset`` on, the joined series of ``topic`` now reads ``records``"
    (rows of ``joined_dtype``); ``replaces``: bars already handed on that it supersedes.
    The same contract as ``BarUpdate``, in bars; ``position`` is in the topic's records
    (``stride`` a bar), as ``stream(..., resume=...)`` takes it."""

    stride: int = 1

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq, self.end_offset * self.stride)


class Joiner:
    """One feature topic's record-level items → bar-level joined items."""

    def __init__(self, topic: str, schema: layout.Described, keep_records: int) -> None:
        self.topic = topic
        self.schema = schema
        self.stride = layout.stride(schema)
        self.keep = max(keep_records, 4 * self.stride)
        self._copy = np.zeros(0, RECORD_DTYPE)
        self._base = 0  # record offset of _copy[0] (a bar boundary)
        self._sent = 0  # bars handed on: the joined series' end

    def resume(self, at: Position) -> None:
        self._base = at.end - at.end % self.stride
        self._sent = self._base // self.stride
        self._copy = np.zeros(0, RECORD_DTYPE)

    def on_item(self, item: BarUpdate, history: int | None = None) -> list[FeatureBarUpdate]:
        """The joined item(s) ``item`` makes; ``history``: how many bars a history or
        reset item hands on (its last ones; None: all it has)."""
        g1 = self.stride
        s, recs = item.start_offset, item.records.view(RECORD_DTYPE)
        fresh = item.kind in ("history", "reset")
        if fresh or s < self._base:
            aligned = -(-s // g1) * g1  # the first bar boundary at or after s
            if not fresh and aligned != s:
                log.warning(
                    "%s: a change from record %d reaches past the %d records kept; its "
                    "first bar (%d) is handed on from the next whole one",
                    self.topic,
                    s,
                    self.keep,
                    s // g1,
                )
            self._copy = np.array(recs[aligned - s :])
            self._base = aligned
            first = aligned // g1
        else:
            cut = s - self._base
            self._copy = np.concatenate([self._copy[:cut], recs])
            first = s // g1
        end = (self._base + len(self._copy)) // g1  # whole bars held
        sent = self._sent
        if fresh:
            replaces = -(-item.replaces // g1) if item.kind == "reset" else 0
            lo = first if history is None else max(first, end - history)
        elif first < sent:
            replaces, lo = sent - first, first
        else:
            replaces, lo = 0, sent
        self._sent = end
        self._trim()
        if lo >= end and not replaces and not fresh:
            return []
        rows = self._rows(lo, end)
        return [
            FeatureBarUpdate(
                self.topic, item.seq, lo, rows, replaces, item.kind, item.epoch, stride=g1
            )
        ]

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        g1 = self.stride
        a, b = lo * g1 - self._base, hi * g1 - self._base
        if hi <= lo:
            return np.zeros(0, joined_dtype(self.schema))
        return joined(self.schema, self._copy[a:b], first_bar=lo)

    def _trim(self) -> None:
        extra = len(self._copy) - self.keep
        if extra > 0:
            extra -= extra % self.stride
            self._copy = self._copy[extra:].copy()
            self._base += extra
