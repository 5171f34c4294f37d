"""Textbook indicators in plain Python loops: the tests' independent oracle for the features
engine. Written from the definitions (Wilder 1978, Appel, Bollinger, Lane, Lambert, Granville),
not from the engine's kernels: lists in, lists out, ``None`` where a value is not defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Col = list[float | None]
Bar = tuple[int, float, float, float, float]  # ts_ms, high, low, close, volume


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: Sequence[float], ddof: int) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def returns(c: Sequence[float], p: int) -> tuple[Col, Col]:
    simple: Col = [None] * len(c)
    log: Col = [None] * len(c)
    for i in range(p, len(c)):
        simple[i] = c[i] / c[i - p] - 1
        log[i] = math.log(c[i] / c[i - p])
    return simple, log


def sma(c: Sequence[float], n: int) -> Col:
    return [None if i < n - 1 else _mean(c[i - n + 1 : i + 1]) for i in range(len(c))]


def ema(c: Sequence[float | None], n: int) -> Col:
    """alpha = 2/(n+1), first value = mean of the first n defined inputs."""
    out: Col = [None] * len(c)
    alpha = 2 / (n + 1)
    seen: list[float] = []
    prev: float | None = None
    for i, x in enumerate(c):
        if x is None:
            continue
        seen.append(x)
        if len(seen) == n:
            prev = _mean(seen)
        elif len(seen) > n:
            assert prev is not None
            prev = alpha * x + (1 - alpha) * prev
        out[i] = prev
    return out


def wma(c: Sequence[float], n: int) -> Col:
    w = n * (n + 1) / 2
    return [
        None if i < n - 1 else sum((k + 1) * c[i - n + 1 + k] for k in range(n)) / w
        for i in range(len(c))
    ]


def rsi(c: Sequence[float], n: int) -> tuple[Col, Col, Col]:
    """Wilder: first averages = simple means of the first n gains/losses, then
    avg = (prev (n-1) + x) / n; RSI = 100 - 100 / (1 + RS); undefined when both are 0."""
    out: Col = [None] * len(c)
    ag_col: Col = [None] * len(c)
    al_col: Col = [None] * len(c)
    gains = [max(c[i] - c[i - 1], 0.0) for i in range(1, len(c))]
    losses = [max(c[i - 1] - c[i], 0.0) for i in range(1, len(c))]
    ag = al = 0.0
    for i in range(n, len(c)):
        if i == n:
            ag, al = _mean(gains[:n]), _mean(losses[:n])
        else:
            ag = (ag * (n - 1) + gains[i - 1]) / n
            al = (al * (n - 1) + losses[i - 1]) / n
        ag_col[i], al_col[i] = ag, al
        if al == 0 and ag == 0:
            continue
        out[i] = 100.0 if al == 0 else 100 - 100 / (1 + ag / al)
    return out, ag_col, al_col


def macd(c: Sequence[float], fast: int, slow: int, sig: int) -> tuple[Col, Col, Col]:
    ef, es = ema(c, fast), ema(c, slow)
    line: Col = [None if b is None or a is None else a - b for a, b in zip(ef, es, strict=True)]
    signal = ema(line, sig)
    hist: Col = [
        None if s is None or m is None else m - s for m, s in zip(line, signal, strict=True)
    ]
    return line, signal, hist


def bbands(c: Sequence[float], n: int, k: float) -> tuple[Col, Col, Col, Col]:
    mid: Col = [None] * len(c)
    up: Col = [None] * len(c)
    lo: Col = [None] * len(c)
    pb: Col = [None] * len(c)
    for i in range(n - 1, len(c)):
        w = c[i - n + 1 : i + 1]
        m, sd = _mean(w), _std(w, 0)  # population deviation (Bollinger)
        mid[i], up[i], lo[i] = m, m + k * sd, m - k * sd
        if sd > 0:
            pb[i] = (c[i] - (m - k * sd)) / (2 * k * sd)
    return mid, up, lo, pb


def true_ranges(bars: Sequence[Bar]) -> list[float | None]:
    out: list[float | None] = [None]
    for i in range(1, len(bars)):
        _, h, lw, _, _ = bars[i]
        pc = bars[i - 1][3]
        out.append(max(h - lw, abs(h - pc), abs(lw - pc)))
    return out


def wilder(xs: Sequence[float | None], n: int) -> Col:
    """Wilder's average of xs[1..]: first = mean of xs[1..n] at index n, then (prev (n-1) + x)/n."""
    out: Col = [None] * len(xs)
    prev = 0.0
    for i in range(n, len(xs)):
        x = xs[i]
        assert x is not None
        prev = (
            _mean([v for v in xs[1 : n + 1] if v is not None])
            if i == n
            else (prev * (n - 1) + x) / n
        )
        out[i] = prev
    return out


def atr(bars: Sequence[Bar], n: int) -> Col:
    return wilder(true_ranges(bars), n)


def stoch(bars: Sequence[Bar], k: int, d: int) -> tuple[Col, Col]:
    kk: Col = [None] * len(bars)
    for i in range(k - 1, len(bars)):
        hh = max(b[1] for b in bars[i - k + 1 : i + 1])
        ll = min(b[2] for b in bars[i - k + 1 : i + 1])
        if hh != ll:
            kk[i] = 100 * (bars[i][3] - ll) / (hh - ll)
    dd: Col = [None] * len(bars)
    for i in range(k + d - 2, len(bars)):
        w = kk[i - d + 1 : i + 1]
        if all(x is not None for x in w):
            dd[i] = sum(x for x in w if x is not None) / d
    return kk, dd


def willr(bars: Sequence[Bar], n: int) -> Col:
    out: Col = [None] * len(bars)
    for i in range(n - 1, len(bars)):
        hh = max(b[1] for b in bars[i - n + 1 : i + 1])
        ll = min(b[2] for b in bars[i - n + 1 : i + 1])
        if hh != ll:
            out[i] = -100 * (hh - bars[i][3]) / (hh - ll)
    return out


def cci(bars: Sequence[Bar], n: int, const: float) -> Col:
    tp = [(b[1] + b[2] + b[3]) / 3 for b in bars]
    out: Col = [None] * len(bars)
    for i in range(n - 1, len(bars)):
        w = tp[i - n + 1 : i + 1]
        m = _mean(w)
        md = _mean([abs(x - m) for x in w])
        if md > 0:
            out[i] = (tp[i] - m) / (const * md)
    return out


def roc(c: Sequence[float], n: int) -> tuple[Col, Col]:
    r: Col = [None] * len(c)
    mom: Col = [None] * len(c)
    for i in range(n, len(c)):
        r[i] = 100 * (c[i] - c[i - n]) / c[i - n]
        mom[i] = c[i] - c[i - n]
    return r, mom


def _log_returns(c: Sequence[float]) -> list[float]:
    return [math.nan] + [math.log(c[i] / c[i - 1]) for i in range(1, len(c))]


def volatility(c: Sequence[float], n: int, ddof: int) -> Col:
    r = _log_returns(c)
    return [None if i < n else _std(r[i - n + 1 : i + 1], ddof) for i in range(len(c))]


def zscore(c: Sequence[float], n: int, ddof: int) -> Col:
    r = _log_returns(c)
    out: Col = [None] * len(c)
    for i in range(n, len(c)):
        w = r[i - n + 1 : i + 1]
        sd = _std(w, ddof)
        if sd > 0:
            out[i] = (r[i] - _mean(w)) / sd
    return out


def donchian(bars: Sequence[Bar], n: int) -> tuple[Col, Col, Col]:
    up: Col = [None] * len(bars)
    lo: Col = [None] * len(bars)
    mid: Col = [None] * len(bars)
    for i in range(n - 1, len(bars)):
        hh = max(b[1] for b in bars[i - n + 1 : i + 1])
        ll = min(b[2] for b in bars[i - n + 1 : i + 1])
        up[i], lo[i], mid[i] = hh, ll, (hh + ll) / 2
    return up, lo, mid


def obv(bars: Sequence[Bar]) -> Col:
    out: Col = [0.0]
    for i in range(1, len(bars)):
        prev = out[-1]
        assert prev is not None
        c, pc, v = bars[i][3], bars[i - 1][3], bars[i][4]
        out.append(prev + v if c > pc else prev - v if c < pc else prev)
    return out[: len(bars)]


def vwap_utc_day(bars: Sequence[Bar]) -> Col:
    out: Col = []
    day = None
    pv = vol = 0.0
    for ts, h, lw, c, v in bars:
        if ts // 86_400_000 != day:
            day, pv, vol = ts // 86_400_000, 0.0, 0.0
        pv += (h + lw + c) / 3 * v
        vol += v
        out.append(pv / vol if vol > 0 else None)
    return out


def adx(bars: Sequence[Bar], n: int) -> tuple[Col, Col, Col]:
    """Wilder: +DM/-DM and TR from bar 1; smoothed sums (first = plain sum of bars 1..n, then
    s - s/n + x); +DI = 100 +DM/TR; DX = 100 |+DI - -DI| / (+DI + -DI) (0 when both 0);
    ADX = mean of the first n DX, then Wilder's average."""
    size = len(bars)
    tr = true_ranges(bars)
    pdm: list[float] = [0.0]
    mdm: list[float] = [0.0]
    for i in range(1, size):
        up = bars[i][1] - bars[i - 1][1]
        dn = bars[i - 1][2] - bars[i][2]
        pdm.append(up if up > dn and up > 0 else 0.0)
        mdm.append(dn if dn > up and dn > 0 else 0.0)
    pdi: Col = [None] * size
    mdi: Col = [None] * size
    out: Col = [None] * size
    dxs: list[float] = []
    s_tr = s_p = s_m = 0.0
    a = 0.0
    for i in range(n, size):
        if i == n:
            s_tr = sum(t for t in tr[1 : n + 1] if t is not None)
            s_p, s_m = sum(pdm[1 : n + 1]), sum(mdm[1 : n + 1])
        else:
            t = tr[i]
            assert t is not None
            s_tr, s_p, s_m = s_tr - s_tr / n + t, s_p - s_p / n + pdm[i], s_m - s_m / n + mdm[i]
        dx = 0.0
        if s_tr > 0:
            pdi[i], mdi[i] = 100 * s_p / s_tr, 100 * s_m / s_tr
            p, m = 100 * s_p / s_tr, 100 * s_m / s_tr
            dx = 100 * abs(p - m) / (p + m) if p + m > 0 else 0.0
        dxs.append(dx)
        if len(dxs) == n:
            a = _mean(dxs)
        elif len(dxs) > n:
            a = (a * (n - 1) + dx) / n
        if len(dxs) >= n:
            out[i] = a
    return out, pdi, mdi
