"""The indicator engine: a feature set over bars, as a batch or one bar at a time (no I/O).

One definition
--------------
Each indicator is one compiled loop (numba, ``averages``/``ranges``/``flows``) that computes
bars ``start <= i < end`` of some bar arrays from the state before ``start``. :func:`compute`
(batch) runs it once over the whole history; :class:`Stream` (incremental) runs the same
compiled code over the last ``lookback`` bars it keeps plus the new bar(s). Same operations on
the same operands in the same order, so incremental values equal batch values bit for bit —
no tolerance anywhere. numpy alone cannot express a recurrence (EMA, Wilder) as one vectorised
pass, and a vectorised rolling sum (cumsum differences) would not equal a window recomputed
incrementally; a compiled loop is both, at numpy speed.

State and warm-up
-----------------
The state a Stream carries is the kernels' recursive values (EMAs, Wilder averages and sums,
OBV, VWAP sums: the ``hidden`` columns of the set, spec.py) plus the last ``lookback`` bars.
Past ``FeatureSet.horizon`` every state value *is* a stored column, so :func:`state_at` rebuilds
the state at bar x - 1 from the stored row x - 1 and the bars ``x - lookback .. x - 1`` alone;
before it (a warm-up, at most a few dozen bars) it replays the bars from 0, which is the same
tail. Values before an indicator has enough history are NaN with their validity 0 — never a
silent zero.

Provisional bars
----------------
``Stream.peek(bar)`` computes the features of a bar after the committed ones from a copy of
the state: nothing moves; a later ``peek`` or ``apply`` replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from barstream.services.features import averages as A
from barstream.services.features import flows as F
from barstream.services.features import ranges as R
from barstream.services.features.spec import KINDS, FeatureSet
from barstream.shared.alignment import UTC
from barstream.shared.record import RECORD_DTYPE
from barstream.shared.sessions import Session, bucket_edges
from barstream.shared.timeframe import DAY_MS

NAN = np.nan


@njit(cache=True)
def _derive(h, lw, c, lr, tp, lo, end):  # type: ignore[no-untyped-def]
    """The inputs several kernels share: typical price ``(h + l + c) / 3`` and the one-bar log
    return ``log(c[i] / c[i-1])`` (NaN at array index 0, which no kernel reads past warm-up)."""
    for i in range(lo, end):
        tp[i] = (h[i] + lw[i] + c[i]) / 3.0
        lr[i] = math.log(c[i] / c[i - 1]) if i > 0 else NAN


@njit(cache=True)
def _run(  # type: ignore[no-untyped-def]
    codes, pint, pflt, cols, slots, ad, asess, h, lw, c, v, lr, tp, base, start, end, st, out, ok
):
    """Every indicator of a set over bars ``start <= i < end`` (global index ``base + i``)."""
    _derive(h, lw, c, lr, tp, start, end)
    for k in range(codes.shape[0]):
        code, pi, pf, col, s = codes[k], pint[k], pflt[k], cols[k], st[slots[k] :]
        if code == 1:
            A.returns(pi, c, lr, base, start, end, out, ok, col)
        elif code == 2:
            A.sma(pi, c, base, start, end, out, ok, col)
        elif code == 3:
            A.ema(pi, pf, c, base, start, end, s, out, ok, col)
        elif code == 4:
            A.wma(pi, pf, c, base, start, end, out, ok, col)
        elif code == 5:
            R.rsi(pi, c, base, start, end, s, out, ok, col)
        elif code == 6:
            A.macd(pi, pf, c, base, start, end, s, out, ok, col)
        elif code == 7:
            A.bbands(pi, pf, c, base, start, end, out, ok, col)
        elif code == 8:
            F.atr(pi, h, lw, c, base, start, end, s, out, ok, col)
        elif code == 9:
            R.stoch(pi, h, lw, c, base, start, end, out, ok, col)
        elif code == 10:
            R.willr(pi, h, lw, c, base, start, end, out, ok, col)
        elif code == 11:
            R.cci(pi, pf, tp, base, start, end, out, ok, col)
        elif code == 12:
            A.roc(pi, c, base, start, end, out, ok, col)
        elif code == 13:
            A.volatility(pi, lr, base, start, end, out, ok, col)
        elif code == 14:
            A.zscore(pi, lr, base, start, end, out, ok, col)
        elif code == 15:
            R.donchian(pi, h, lw, base, start, end, out, ok, col)
        elif code == 16:
            F.obv(c, v, base, start, end, s, out, ok, col)
        elif code == 17:
            F.vwap(tp, v, asess if pi[0] == 1 else ad, base, start, end, s, out, ok, col)
        elif code == 18:
            F.adx(pi, h, lw, c, base, start, end, s, out, ok, col)


def _flush_stale_caches() -> None:
    """numba's on-disk cache keys a compiled function by its own file's stamp only, so a
    kernel that calls into another file (``_run`` into every kernel, ranges/flows into
    averages) would keep running stale code after that file changes. Keyed here by the digest
    of all four kernel files: on a mismatch every kernel's cache index is flushed (recompiled
    once, then cached again)."""
    mods = (A, R, F, sys.modules[__name__])
    digest = hashlib.blake2b(
        b"".join(Path(str(m.__file__)).read_bytes() for m in mods), digest_size=16
    ).hexdigest()
    kernels = [
        obj
        for m in mods
        for obj in vars(m).values()
        if getattr(obj, "_cache", None) is not None and hasattr(obj, "py_func")
    ]
    stamps = {Path(k._cache.cache_path) / "barstream-features.digest" for k in kernels}
    if all(p.is_file() and p.read_text() == digest for p in stamps):
        return
    for k in kernels:
        with contextlib.suppress(OSError):
            k._cache.flush()
    for p in stamps:
        with contextlib.suppress(OSError):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(digest)


_flush_stale_caches()


@dataclass(frozen=True)
class Program:
    """A FeatureSet compiled to the arrays ``_run`` reads."""

    fs: FeatureSet
    codes: np.ndarray
    pint: np.ndarray
    pflt: np.ndarray
    cols: np.ndarray
    slots: np.ndarray
    n_state: int
    #: (state slot, stored column) pairs: the state read back from a stored row
    state_map: tuple[tuple[int, int], ...]
    session_anchor: bool

    @classmethod
    def of(cls, fs: FeatureSet) -> Program:
        k = len(fs.indicators)
        codes = np.zeros(k, np.int64)
        pint = np.zeros((k, 4), np.int64)
        pflt = np.zeros((k, 2), np.float64)
        cols = np.zeros(k, np.int64)
        slots = np.zeros(k, np.int64)
        col = slot = 0
        smap: list[tuple[int, int]] = []
        for j, ind in enumerate(fs.indicators):
            spec = KINDS[ind.kind]
            ints, floats = spec.encode(ind.params)
            codes[j], pint[j], pflt[j], cols[j], slots[j] = spec.code, ints, floats, col, slot
            smap += [(slot + s, col + c) for s, c in enumerate(spec.state_cols)]
            col += len(ind.columns)
            slot += len(spec.state_cols)
        sess = any(i.kind == "vwap" and i.params["anchor"] == "session" for i in fs.indicators)
        return cls(fs, codes, pint, pflt, cols, slots, slot, tuple(smap), sess)


@dataclass(frozen=True)
class Features:
    """Feature values of consecutive bars: ``values[column, bar]`` (NaN where not valid)."""

    columns: tuple[str, ...]
    ts_ms: np.ndarray  # (m,) int64, the bars' ts_ms
    flags: np.ndarray  # (m,) uint16, the bars' flags
    values: np.ndarray  # (C, m) float64
    ok: np.ndarray  # (C, m) uint8: 1 = valid

    @property
    def valid(self) -> np.ndarray:
        return self.ok.view(np.bool_)

    def __len__(self) -> int:
        return len(self.ts_ms)

    def column(self, name: str) -> np.ndarray:
        return self.values[self.columns.index(name)]  # type: ignore[no-any-return]


def _anchors(ts: np.ndarray, prog: Program, sessions: Sequence[Session] | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    day = ts // DAY_MS
    if not prog.session_anchor:
        return day, day
    start = bucket_edges(ts, "1d", UTC, list(sessions) if sessions else None)[0]
    return day, np.ascontiguousarray(start, np.int64)


def _arrays(bars: np.ndarray) -> tuple[np.ndarray, ...]:
    if bars.dtype != RECORD_DTYPE:
        raise TypeError(f"bars must be shared.record.RECORD_DTYPE records, not {bars.dtype}")
    return tuple(np.ascontiguousarray(bars[f]) for f in ("ts_ms", "high", "low", "close", "volume"))  # fmt: skip


def compute(
    fs: FeatureSet | Program, bars: np.ndarray, sessions: Sequence[Session] | None = None
) -> Features:
    """Batch: the set's features of every bar of ``bars`` (a whole store from offset 0)."""
    prog = fs if isinstance(fs, Program) else Program.of(fs)
    ts, h, lw, c, v = _arrays(bars)
    n = len(ts)
    ad, asess = _anchors(ts, prog, sessions)
    out = np.empty((len(prog.fs.columns), n), np.float64)
    ok = np.empty((len(prog.fs.columns), n), np.uint8)
    st = np.full(prog.n_state, NAN)
    lr, tp = np.empty(n), np.empty(n)
    _call(prog, ad, asess, h, lw, c, v, lr, tp, 0, 0, n, st, out, ok)
    return Features(prog.fs.columns, ts, np.ascontiguousarray(bars["flags"]), out, ok)


def compute_blocks(
    fs: FeatureSet | Program,
    bars: np.ndarray,
    sessions: Sequence[Session] | None = None,
    block: int = 65_536,
) -> Iterator[tuple[int, Features]]:
    """Batch in blocks: yields (first bar, Features of ``block`` bars) over the whole of
    ``bars``, the same values as :func:`compute` — it is a :class:`Stream` fed ``block``
    bars at a time, so memory stays bounded by the block and the kept tail, and the buffers
    are reused (on this sandbox a fresh page costs more than a bar's arithmetic)."""
    s = Stream(fs, sessions)
    for lo in range(0, len(bars), block):
        yield lo, s.apply(bars[lo : lo + block])


def _call(prog: Program, *args: object) -> None:
    _run(prog.codes, prog.pint, prog.pflt, prog.cols, prog.slots, *args)


class Stream:
    """Incremental state of one set over one bar store, at ``offset`` committed bars."""

    def __init__(self, fs: FeatureSet | Program, sessions: Sequence[Session] | None = None) -> None:
        self.prog = fs if isinstance(fs, Program) else Program.of(fs)
        self.sessions = list(sessions) if sessions else None
        self.keep = self.prog.fs.lookback
        self.offset = 0  # bars committed
        self._st = np.full(self.prog.n_state, NAN)
        self._cap = self.keep + 256
        self._n = 0  # bars in the buffers
        self._alloc(self._cap)

    def _alloc(self, cap: int) -> None:
        self._ts = np.zeros(cap, np.int64)
        self._ad = np.zeros(cap, np.int64)
        self._as = np.zeros(cap, np.int64)
        self._f = np.zeros((4, cap), np.float64)  # h, lw, c, v
        self._lr = np.zeros(cap)
        self._tp = np.zeros(cap)

    @property
    def state(self) -> np.ndarray:
        """A copy of the recursive state (compare with ``tobytes()``)."""
        return self._st.copy()

    def tail(self) -> np.ndarray:
        """The bars kept (the last ``lookback`` committed): ts_ms, high, low, close, volume."""
        k = min(self._n, self.keep)
        return np.concatenate([self._ts[self._n - k : self._n, None].astype(np.float64),
                               self._f[:, self._n - k : self._n].T], axis=1)  # fmt: skip

    def _place(self, bars: np.ndarray) -> int:
        """Write ``bars`` after the kept ones; returns where they start."""
        m = len(bars)
        if self._n + m > self._cap:  # keep the last `keep` bars, make room
            k = min(self._n, self.keep)
            old = (self._ts, self._ad, self._as, self._lr, self._tp)
            f = self._f
            lo = self._n - k
            if k + m > self._cap:
                self._cap = k + m + 256
                self._alloc(self._cap)
            for dst, src in zip(
                (self._ts, self._ad, self._as, self._lr, self._tp), old, strict=True
            ):
                dst[:k] = src[lo : lo + k]
            self._f[:, :k] = f[:, lo : lo + k]
            self._n = k
        ts, h, lw, c, v = _arrays(bars)
        at, end = self._n, self._n + m
        self._ts[at:end] = ts
        ad, asess = _anchors(ts, self.prog, self.sessions)
        self._ad[at:end] = ad
        self._as[at:end] = asess
        self._f[0, at:end], self._f[1, at:end], self._f[2, at:end], self._f[3, at:end] = h, lw, c, v
        return at

    def _step(self, bars: np.ndarray, st: np.ndarray) -> Features:
        at = self._place(bars)
        m = len(bars)
        cols = len(self.prog.fs.columns)
        out = np.empty((cols, m), np.float64)
        ok = np.empty((cols, m), np.uint8)
        f = self._f
        base = self.offset - at
        _call(self.prog, self._ad, self._as, f[0], f[1], f[2], f[3], self._lr, self._tp, base, at, at + m, st, out, ok)  # fmt: skip
        ts = self._ts[at : at + m].copy()
        return Features(self.prog.fs.columns, ts, np.ascontiguousarray(bars["flags"]), out, ok)

    def apply(self, bars: np.ndarray) -> Features:
        """Commit ``bars`` (one or more, following the committed ones); their features."""
        if not len(bars):
            return self._step(bars, self._st)
        feats = self._step(bars, self._st)
        self._n += len(bars)
        self.offset += len(bars)
        return feats

    def peek(self, bar: np.ndarray) -> Features:
        """Provisional: the features ``bar`` (after the committed bars) would have; nothing is
        committed, a later peek/apply replaces it."""
        bars = np.atleast_1d(bar)
        if len(bars) != 1:
            raise ValueError(f"peek takes one bar, not {len(bars)}")
        return self._step(bars, self._st.copy())


def state_at(
    fs: FeatureSet | Program,
    bars: np.ndarray,
    row: np.ndarray | None,
    x: int,
    sessions: Sequence[Session] | None = None,
) -> Stream:
    """The Stream at offset ``x`` (bars 0..x-1 committed), from the stored feature row
    ``x - 1`` (``values[:, x-1]`` or ``layout.row``) and the bars ``x - lookback .. x - 1``
    of ``bars`` (the bar store; only that tail is read). Before the set's warm-up horizon the
    state is not all stored yet: the (at most ``horizon + 1``) bars are replayed instead."""
    prog = fs if isinstance(fs, Program) else Program.of(fs)
    s = Stream(prog, sessions)
    if not 0 <= x <= len(bars):
        raise ValueError(f"offset {x} is outside the {len(bars)} bars")
    if x - 1 <= prog.fs.horizon:
        s.apply(bars[:x])
        return s
    if row is None or len(row) != len(prog.fs.columns):
        raise ValueError(f"state_at({x}) needs the stored row {x - 1} of {len(prog.fs.columns)} values")  # fmt: skip
    for slot, col in prog.state_map:
        s._st[slot] = row[col]
    lo = max(0, x - s.keep)
    s._place(bars[lo:x])
    s._n = x - lo
    f = s._f
    _derive(f[0], f[1], f[2], s._lr, s._tp, 0, s._n)
    s.offset = x
    return s
