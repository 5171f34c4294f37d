"""Kernels of the range and oscillator indicators: RSI, stochastic, Williams %R, CCI, Donchian.

Same kernel shape and rules as averages.py (windows recomputed from their values; Wilder
recursions as one recurrence shared by batch and incremental).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from barstream.services.features.averages import (
    CHUNK,
    NAN,
    first_at,
    put,
    window_devs,
    window_means,
)

#: windows up to this many bars are scanned (vectorised across bars) instead of a deque
SCAN_MAX = 64


@njit(cache=True)
def rolling_extreme(x, n, lo, end, is_max):  # type: ignore[no-untyped-def]
    """``r[i - lo]`` = the max (``is_max``) or min of ``x[i-n+1 .. i]`` for lo <= i < end
    (clipped at index 0). Both ways below give the value at the newest index holding the
    extreme (a later equal value wins: the same bits, +0.0 / -0.0 included): a scan of the
    window oldest to newest, many bars at a time (short windows without NaN), else a monotonic
    deque (O(1) a bar; NaN anywhere in the span read takes this path, as it always did)."""
    first = max(lo - n + 1, 0)
    if n > SCAN_MAX:
        return _deque_extreme(x, n, lo, end, is_max)
    for q in range(first, end):
        if x[q] != x[q]:
            return _deque_extreme(x, n, lo, end, is_max)
    m = max(end - lo, 0)
    r = np.empty(m)
    full = min(max(n - 1, lo), end)  # from here the window is not clipped
    for i in range(lo, full):
        e = x[max(i - n + 1, 0)]
        for q in range(max(i - n + 2, 0), i + 1):
            v = x[q]
            e = v if (v >= e if is_max else v <= e) else e
        r[i - lo] = e
    for a in range(full, end, CHUNK):
        w = min(CHUNK, end - a)
        rr = r[a - lo : a - lo + w]
        b = a - n + 1
        xx = x[b : b + w]
        for k in range(w):
            rr[k] = xx[k]
        for t in range(1, n):
            xx = x[b + t : b + t + w]
            if is_max:
                for k in range(w):
                    v = xx[k]
                    rr[k] = v if v >= rr[k] else rr[k]
            else:
                for k in range(w):
                    v = xx[k]
                    rr[k] = v if v <= rr[k] else rr[k]
    return r


@njit(cache=True)
def _deque_extreme(x, n, lo, end, is_max):  # type: ignore[no-untyped-def]
    """``rolling_extreme`` with a monotonic deque (pops the older of equal values)."""
    first = max(lo - n + 1, 0)
    r = np.empty(max(end - lo, 0))
    dq = np.empty(max(end - first, 1), np.int64)
    head = 0
    tail = 0
    for i in range(first, end):
        v = x[i]
        if is_max:
            while tail > head and x[dq[tail - 1]] <= v:
                tail -= 1
        else:
            while tail > head and x[dq[tail - 1]] >= v:
                tail -= 1
        dq[tail] = i
        tail += 1
        if dq[head] <= i - n:
            head += 1
        if i >= lo:
            r[i - lo] = x[dq[head]]
    return r


@njit(cache=True)
def rsi(pi, c, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """Wilder's RSI: change d = c[i] - c[i-1], gain = max(d, 0), loss = max(-d, 0); seed at
    index n: avg_gain, avg_loss = plain means of the first n gains/losses (indices 1..n); then
    Wilder smoothing ``avg = (avg (n-1) + x) / n``. RSI = 100 avg_gain / (avg_gain +
    avg_loss) (= 100 - 100/(1 + RS)); not valid when both averages are 0 (no change over the
    whole memory). Valid from n. Columns: value, avg_gain, avg_loss (= the state)."""
    n = pi[0]
    ag, al = st[0], st[1]
    for i in range(start, end):
        g = base + i
        j = i - start
        if g < n:
            ag = NAN
            al = NAN
        elif g == n:
            sg = 0.0
            sl = 0.0
            for q in range(i - n + 1, i + 1):
                d = c[q] - c[q - 1]
                if d > 0.0:
                    sg += d
                elif d < 0.0:
                    sl -= d
            ag = sg / n
            al = sl / n
        else:
            d = c[i] - c[i - 1]
            ag = (ag * (n - 1) + (d if d > 0.0 else 0.0)) / n
            al = (al * (n - 1) + (-d if d < 0.0 else 0.0)) / n
        v = g >= n
        tot = ag + al
        vr = v and tot > 0.0
        put(out, ok, col, j, 100.0 * ag / tot if vr else NAN, vr)
        put(out, ok, col + 1, j, ag, v)
        put(out, ok, col + 2, j, al, v)
    st[0], st[1] = ag, al


@njit(cache=True)
def stoch(pi, h, lw, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Fast stochastic: %K = 100 (c - LL) / (HH - LL), HH/LL the highest high / lowest low of
    the last k bars (valid from k-1; not valid when HH = LL); %D = the plain mean of the last d
    %K values (valid from k+d-2 when all d are valid)."""
    nk, nd = pi[0], pi[1]
    lo = max(start - nd + 1, 0)  # %K of the bars the first %D reads, each computed once
    hh = rolling_extreme(h, nk, lo, end, True)
    ll = rolling_extreme(lw, nk, lo, end, False)
    ks = np.empty(end - lo)
    for i in range(lo, end):
        u, d = hh[i - lo], ll[i - lo]
        ks[i - lo] = 100.0 * (c[i] - d) / (u - d) if base + i >= nk - 1 and u > d else NAN
    for i in range(start, end):
        g = base + i
        j = i - start
        kv = ks[i - lo]
        put(out, ok, col, j, kv, kv == kv)
        dv = NAN
        if g >= nk + nd - 2:
            s = 0.0
            for q in range(i - nd + 1, i + 1):
                s += ks[q - lo]
            dv = s / nd
        put(out, ok, col + 1, j, dv, dv == dv)


@njit(cache=True)
def willr(pi, h, lw, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Williams %R = -100 (HH - c) / (HH - LL) over the last n bars (in [-100, 0]); not valid
    when HH = LL. Valid from n-1."""
    n = pi[0]
    highs = rolling_extreme(h, n, start, end, True)
    lows = rolling_extreme(lw, n, start, end, False)
    for i in range(start, end):
        x = NAN
        if base + i >= n - 1:
            hh = highs[i - start]
            ll = lows[i - start]
            if hh > ll:
                x = -100.0 * (hh - c[i]) / (hh - ll)
        put(out, ok, col, i - start, x, x == x)


@njit(cache=True)
def cci(pi, pf, tp, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Commodity Channel Index: tp = (h + l + c) / 3; CCI = (tp - SMA(tp, n)) / (constant *
    mean absolute deviation of tp from that SMA over the n bars), constant 0.015 (Lambert);
    not valid when the deviation is 0. Valid from n-1."""
    n = pi[0]
    k = pf[0]
    v0 = first_at(start, end, base, n - 1)
    mean = window_means(tp, n, v0, end)
    dev = window_devs(tp, n, v0, end, mean, False)
    for i in range(start, end):
        x = NAN
        if i >= v0:
            m = mean[i - v0]
            md = dev[i - v0] / n
            if md > 0.0:
                x = (tp[i] - m) / (k * md)
        put(out, ok, col, i - start, x, x == x)


@njit(cache=True)
def donchian(pi, h, lw, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Donchian channel over the last n bars (current included): upper = highest high, lower =
    lowest low, mid = (upper + lower) / 2. Valid from n-1."""
    n = pi[0]
    highs = rolling_extreme(h, n, start, end, True)
    lows = rolling_extreme(lw, n, start, end, False)
    for i in range(start, end):
        j = i - start
        v = base + i >= n - 1
        up = highs[j] if v else NAN
        lo = lows[j] if v else NAN
        put(out, ok, col, j, up, v)
        put(out, ok, col + 1, j, lo, v)
        put(out, ok, col + 2, j, (up + lo) / 2.0, v)
