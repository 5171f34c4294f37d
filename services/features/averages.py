"""Kernels of the close-price indicators: returns, SMA, EMA, WMA, MACD, Bollinger, ROC,
volatility and z-score of returns.

Every kernel has one shape (see engine.py): it reads bar arrays at indices ``i - lookback + 1 ..
i``, computes bars ``start <= i < end`` (global index ``g = base + i``), reads and writes its
state in ``st`` and writes column ``col + m`` of row ``i - start`` in ``out`` (NaN when not
valid) and ``ok`` (1 valid, 0 not). Batch runs it once over the whole history; incremental runs
the same compiled code over the bars kept in the tail plus the new one. Hence one definition,
and bit-identical values: same operations on the same operands in the same order.

Rolling windows are recomputed from the window's values each bar (``window_sum``: a fixed
summation order), never kept as running sums, so nothing drifts and no running total is state.
The kernels get them from ``window_sums`` / ``window_devs``: each bar's sums exactly as
``window_sum`` / ``window_dev`` add them, only many bars at a time (one SIMD lane a bar), so
the values are the same bit for bit. ``c`` is close, ``lr`` the log return
``log(c[i] / c[i-1])`` (engine.py, computed once per bar).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

NAN = np.nan


@njit(cache=True, inline="always")
def put(out, ok, col, j, x, valid):  # type: ignore[no-untyped-def]
    if valid:
        out[col, j] = x
        ok[col, j] = 1
    else:
        out[col, j] = NAN
        ok[col, j] = 0


@njit(cache=True)
def window_sum(x, i, n):  # type: ignore[no-untyped-def]
    """Sum of ``x[i-n+1 .. i]`` in a fixed order: four interleaved partial sums (element
    q goes to sum (q - first) % 4, each summed oldest first), combined as (s0 + s1) + (s2 +
    s3), then the last n % 4 values oldest first. Four independent chains run 3-4x faster
    than one; the order is the kernel's, so batch and incremental stay bit-identical."""
    q = i - n + 1
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    while q + 3 <= i:
        s0 += x[q]
        s1 += x[q + 1]
        s2 += x[q + 2]
        s3 += x[q + 3]
        q += 4
    s = (s0 + s1) + (s2 + s3)
    while q <= i:
        s += x[q]
        q += 1
    return s


@njit(cache=True)
def window_mean(x, i, n):  # type: ignore[no-untyped-def]
    """Mean of ``x[i-n+1 .. i]``: ``window_sum / n``."""
    return window_sum(x, i, n) / n


@njit(cache=True)
def window_dev(x, i, n, mean, square):  # type: ignore[no-untyped-def]
    """Sum over ``x[i-n+1 .. i]`` of (x - mean)^2 (``square``) or |x - mean|, in
    ``window_sum``'s order."""
    q = i - n + 1
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    while q + 3 <= i:
        d0 = x[q] - mean
        d1 = x[q + 1] - mean
        d2 = x[q + 2] - mean
        d3 = x[q + 3] - mean
        if square:
            s0 += d0 * d0
            s1 += d1 * d1
            s2 += d2 * d2
            s3 += d3 * d3
        else:
            s0 += abs(d0)
            s1 += abs(d1)
            s2 += abs(d2)
            s3 += abs(d3)
        q += 4
    s = (s0 + s1) + (s2 + s3)
    while q <= i:
        d = x[q] - mean
        s += d * d if square else abs(d)
        q += 1
    return s


@njit(cache=True)
def window_std(x, i, n, mean, ddof):  # type: ignore[no-untyped-def]
    """sqrt(sum((x - mean)^2) / (n - ddof)) over ``x[i-n+1 .. i]`` (two-pass)."""
    return math.sqrt(window_dev(x, i, n, mean, True) / (n - ddof))


#: bars a vectorised window pass keeps in flight (its partial sums stay in L1)
CHUNK = 512


@njit(cache=True)
def first_at(start, end, base, g0):  # type: ignore[no-untyped-def]
    """The first array index in ``start .. end`` whose global index ``base + i`` is >= g0."""
    return min(max(start, g0 - base), end)


@njit(cache=True)
def window_sums(x, n, lo, end):  # type: ignore[no-untyped-def]
    """``r[i - lo] = window_sum(x, i, n)`` for lo <= i < end (``lo - n + 1 >= 0``), bit for
    bit: the same four partial sums per bar, the same order, only many bars at a time (each
    SIMD lane is one bar, so the operations of a bar are those of ``window_sum``)."""
    m = max(end - lo, 0)
    r = np.empty(m)
    w0 = min(CHUNK, m)
    s0 = np.empty(w0)
    s1 = np.empty(w0)
    s2 = np.empty(w0)
    s3 = np.empty(w0)
    first = lo - n + 1
    g4 = n // 4 * 4
    for a in range(0, m, CHUNK):
        w = min(CHUNK, m - a)
        for k in range(w):
            s0[k] = 0.0
            s1[k] = 0.0
            s2[k] = 0.0
            s3[k] = 0.0
        for t in range(0, g4, 4):
            b = first + a + t
            x0 = x[b : b + w]
            x1 = x[b + 1 : b + 1 + w]
            x2 = x[b + 2 : b + 2 + w]
            x3 = x[b + 3 : b + 3 + w]
            for k in range(w):
                s0[k] += x0[k]
                s1[k] += x1[k]
                s2[k] += x2[k]
                s3[k] += x3[k]
        rr = r[a : a + w]
        for k in range(w):
            rr[k] = (s0[k] + s1[k]) + (s2[k] + s3[k])
        for t in range(g4, n):
            b = first + a + t
            xx = x[b : b + w]
            for k in range(w):
                rr[k] += xx[k]
    return r


@njit(cache=True)
def window_means(x, n, lo, end):  # type: ignore[no-untyped-def]
    """``window_mean(x, i, n)`` for lo <= i < end, as ``window_sums``."""
    r = window_sums(x, n, lo, end)
    for k in range(r.shape[0]):
        r[k] = r[k] / n
    return r


@njit(cache=True)
def window_devs(x, n, lo, end, mean, square):  # type: ignore[no-untyped-def]
    """``window_dev(x, i, n, mean[i - lo], square)`` for lo <= i < end, bit for bit (the
    order of ``window_dev``, many bars at a time as ``window_sums``)."""
    m = max(end - lo, 0)
    r = np.empty(m)
    w0 = min(CHUNK, m)
    s0 = np.empty(w0)
    s1 = np.empty(w0)
    s2 = np.empty(w0)
    s3 = np.empty(w0)
    first = lo - n + 1
    g4 = n // 4 * 4
    for a in range(0, m, CHUNK):
        w = min(CHUNK, m - a)
        mm = mean[a : a + w]
        for k in range(w):
            s0[k] = 0.0
            s1[k] = 0.0
            s2[k] = 0.0
            s3[k] = 0.0
        for t in range(0, g4, 4):
            b = first + a + t
            x0 = x[b : b + w]
            x1 = x[b + 1 : b + 1 + w]
            x2 = x[b + 2 : b + 2 + w]
            x3 = x[b + 3 : b + 3 + w]
            if square:
                for k in range(w):
                    d0 = x0[k] - mm[k]
                    d1 = x1[k] - mm[k]
                    d2 = x2[k] - mm[k]
                    d3 = x3[k] - mm[k]
                    s0[k] += d0 * d0
                    s1[k] += d1 * d1
                    s2[k] += d2 * d2
                    s3[k] += d3 * d3
            else:
                for k in range(w):
                    s0[k] += abs(x0[k] - mm[k])
                    s1[k] += abs(x1[k] - mm[k])
                    s2[k] += abs(x2[k] - mm[k])
                    s3[k] += abs(x3[k] - mm[k])
        rr = r[a : a + w]
        for k in range(w):
            rr[k] = (s0[k] + s1[k]) + (s2[k] + s3[k])
        for t in range(g4, n):
            b = first + a + t
            xx = x[b : b + w]
            if square:
                for k in range(w):
                    d = xx[k] - mm[k]
                    rr[k] += d * d
            else:
                for k in range(w):
                    rr[k] += abs(xx[k] - mm[k])
    return r


@njit(cache=True)
def window_stds(x, n, lo, end, mean, ddof):  # type: ignore[no-untyped-def]
    """``window_std(x, i, n, mean[i - lo], ddof)`` for lo <= i < end."""
    r = window_devs(x, n, lo, end, mean, True)
    for k in range(r.shape[0]):
        r[k] = math.sqrt(r[k] / (n - ddof))
    return r


@njit(cache=True)
def returns(pi, c, lr, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Returns over ``period`` p bars: simple ``c[i]/c[i-p] - 1``, log ``log(c[i]/c[i-p])``.
    Valid from index p. For p = 1 the log return is ``lr[i]``, already that same expression
    (engine.py), so the log is not taken twice."""
    p = pi[0]
    for i in range(start, end):
        j = i - start
        v = base + i >= p
        r = c[i] / c[i - p] if v else NAN
        put(out, ok, col, j, r - 1.0, v)
        if p == 1:
            put(out, ok, col + 1, j, lr[i] if v else NAN, v)
        else:
            put(out, ok, col + 1, j, math.log(r) if v else NAN, v)


@njit(cache=True)
def sma(pi, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Simple moving average: the mean of the last ``period`` closes. Valid from n-1."""
    n = pi[0]
    v0 = first_at(start, end, base, n - 1)
    mean = window_means(c, n, v0, end)
    for i in range(start, end):
        v = i >= v0
        put(out, ok, col, i - start, mean[i - v0] if v else NAN, v)


@njit(cache=True)
def ema_step(e, x, g, n, alpha, src, i):  # type: ignore[no-untyped-def]
    """One EMA step at global index g: seed = SMA of the first n values (at g = n-1), then
    ``e + alpha * (x - e)``."""
    if g < n - 1:
        return NAN
    if g == n - 1:
        return window_mean(src, i, n)
    return e + alpha * (x - e)


@njit(cache=True)
def ema(pi, pf, c, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """Exponential moving average, alpha = 2/(n+1), seeded with the SMA of the first n closes
    (TA-Lib's and talipp's seed): e[n-1] = SMA, e[i] = e[i-1] + alpha (c[i] - e[i-1]).
    Valid from n-1. State: e (= the stored value)."""
    n = pi[0]
    alpha = pf[0]
    e = st[0]
    for i in range(start, end):
        g = base + i
        e = ema_step(e, c[i], g, n, alpha, c, i)
        put(out, ok, col, i - start, e, g >= n - 1)
    st[0] = e


@njit(cache=True)
def wma(pi, pf, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Linearly weighted moving average: sum(k * c[i-n+k], k = 1..n) / (n(n+1)/2), oldest
    weight 1, newest n. Valid from n-1."""
    n = pi[0]
    denom = pf[0]
    for i in range(start, end):
        v = base + i >= n - 1
        s = 0.0
        if v:
            s0 = 0.0
            s1 = 0.0
            k = 1
            while k + 1 <= n:  # two interleaved partial sums, as window_sum
                s0 += k * c[i - n + k]
                s1 += (k + 1) * c[i - n + k + 1]
                k += 2
            s = s0 + s1
            if k == n:
                s += n * c[i]
        put(out, ok, col, i - start, s / denom, v)


@njit(cache=True)
def macd(pi, pf, c, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """MACD: line = EMA(fast) - EMA(slow) (both as ``ema``, valid from slow-1); signal =
    EMA(signal) of the line, seeded with the mean of its first ``signal`` values (valid from
    slow + signal - 2); hist = line - signal. Columns: line, signal, hist, ema_fast, ema_slow.
    State: ema_fast, ema_slow, signal (before the seed: the running sum of the line)."""
    fast, slow, sig = pi[0], pi[1], pi[2]
    af, aslow = pf[0], pf[1]
    ag = 2.0 / (sig + 1)
    ef, es, sg = st[0], st[1], st[2]
    g0 = slow - 1
    for i in range(start, end):
        g = base + i
        j = i - start
        ef = ema_step(ef, c[i], g, fast, af, c, i)
        es = ema_step(es, c[i], g, slow, aslow, c, i)
        line = ef - es
        if g < g0:
            sg = NAN
        elif g < g0 + sig - 1:
            sg = line if g == g0 else sg + line
        elif g == g0 + sig - 1:
            sg = (line if g == g0 else sg + line) / sig
        else:
            sg = sg + ag * (line - sg)
        vs = g >= g0 + sig - 1
        put(out, ok, col, j, line, g >= g0)
        put(out, ok, col + 1, j, sg, vs)
        put(out, ok, col + 2, j, line - sg, vs)
        put(out, ok, col + 3, j, ef, g >= fast - 1)
        put(out, ok, col + 4, j, es, g >= g0)
    st[0], st[1], st[2] = ef, es, sg


@njit(cache=True)
def bbands(pi, pf, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Bollinger bands: mid = SMA(n); sd = POPULATION standard deviation of the n closes
    (divide by n, two-pass); upper/lower = mid +/- k sd; %B = (c - lower) / (upper - lower),
    not valid when upper == lower (a flat window). Valid from n-1."""
    n = pi[0]
    k = pf[0]
    v0 = first_at(start, end, base, n - 1)
    mean = window_means(c, n, v0, end)
    sds = window_stds(c, n, v0, end, mean, 0)
    for i in range(start, end):
        j = i - start
        v = i >= v0
        mid = mean[i - v0] if v else NAN
        sd = sds[i - v0] if v else NAN
        up = mid + k * sd
        lo = mid - k * sd
        put(out, ok, col, j, mid, v)
        put(out, ok, col + 1, j, up, v)
        put(out, ok, col + 2, j, lo, v)
        vb = v and up > lo
        put(out, ok, col + 3, j, (c[i] - lo) / (up - lo) if vb else NAN, vb)


@njit(cache=True)
def roc(pi, c, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Rate of change ``100 (c[i] / c[i-n] - 1)`` and momentum ``c[i] - c[i-n]``. Valid
    from n."""
    n = pi[0]
    for i in range(start, end):
        j = i - start
        v = base + i >= n
        put(out, ok, col, j, 100.0 * (c[i] / c[i - n] - 1.0) if v else NAN, v)
        put(out, ok, col + 1, j, c[i] - c[i - n] if v else NAN, v)


@njit(cache=True)
def volatility(pi, lr, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """Rolling volatility: standard deviation of the last n one-bar log returns, sample
    (ddof = 1, default) or population (ddof = 0); not annualised. Valid from n."""
    n, ddof = pi[0], pi[1]
    v0 = first_at(start, end, base, n)
    sds = window_stds(lr, n, v0, end, window_means(lr, n, v0, end), ddof)
    for i in range(start, end):
        v = i >= v0
        put(out, ok, col, i - start, sds[i - v0] if v else NAN, v)


@njit(cache=True)
def zscore(pi, lr, base, start, end, out, ok, col):  # type: ignore[no-untyped-def]
    """z-score of the latest one-bar log return against the last n (itself included):
    ``(lr[i] - mean) / sd``, sd as ``volatility`` (ddof 1 default); not valid when sd = 0.
    Valid from n."""
    n, ddof = pi[0], pi[1]
    v0 = first_at(start, end, base, n)
    mean = window_means(lr, n, v0, end)
    sds = window_stds(lr, n, v0, end, mean, ddof)
    for i in range(start, end):
        v = i >= v0
        z = NAN
        if v:
            m = mean[i - v0]
            sd = sds[i - v0]
            v = sd > 0.0
            z = (lr[i] - m) / sd if v else NAN
        put(out, ok, col, i - start, z, v)
