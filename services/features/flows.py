"""Kernels of the true-range and volume indicators: ATR, ADX (+DI/-DI), OBV, VWAP.

Same kernel shape and rules as averages.py. Wilder's smoothing here is the recurrence
``s = (s (n-1) + x) / n`` (averages) or ``s = s - s / n + x`` (sums, ADX's TR and DM), the same
operations in batch and incremental; running volume sums (OBV, VWAP) are sequential float
sums, bar after bar, kept as stored state.
"""

from __future__ import annotations

from numba import njit

from barstream.services.features.averages import NAN, put


@njit(cache=True, inline="always")
def true_range(h, lw, c, q):  # type: ignore[no-untyped-def]
    """max(h - lw, |h - c[q-1]|, |l - c[q-1]|) (q >= 1)."""
    r = h[q] - lw[q]
    a = abs(h[q] - c[q - 1])
    b = abs(lw[q] - c[q - 1])
    if a > r:
        r = a
    if b > r:
        r = b
    return r


@njit(cache=True)
def atr(pi, h, lw, c, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """Wilder's ATR: TR as ``true_range`` from index 1; seed at index n = mean of TR[1..n]
    (the first bar, without a previous close, has no TR); then ``(atr (n-1) + TR) / n``.
    Valid from n. State: atr (= the stored value)."""
    n = pi[0]
    a = st[0]
    for i in range(start, end):
        g = base + i
        if g < n:
            a = NAN
        elif g == n:
            s = 0.0
            for q in range(i - n + 1, i + 1):
                s += true_range(h, lw, c, q)
            a = s / n
        else:
            a = (a * (n - 1) + true_range(h, lw, c, i)) / n
        put(out, ok, col, i - start, a, g >= n)
    st[0] = a


@njit(cache=True, inline="always")
def _dm(h, lw, q):  # type: ignore[no-untyped-def]
    up = h[q] - h[q - 1]
    dn = lw[q - 1] - lw[q]
    p = up if up > dn and up > 0.0 else 0.0
    m = dn if dn > up and dn > 0.0 else 0.0
    return p, m


@njit(cache=True)
def adx(pi, h, lw, c, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """Wilder's ADX. From index 1: +DM = up if up > down and up > 0 else 0 (up = h - h[-1],
    down = lw[-1] - lw), -DM likewise, TR as ``true_range``. Wilder sums: at index n the plain
    sums of TR, +DM, -DM over indices 1..n, then ``s - s/n + x``. +DI = 100 +DM_sum / TR_sum,
    -DI likewise (valid from n; not valid when TR_sum = 0); DX = 100 |+DI - -DI| / (+DI + -DI)
    (0 when both are 0 or not valid). ADX seed at index 2n-1 = mean of DX[n..2n-1], then
    ``(adx (n-1) + DX) / n``; valid from 2n-1. Columns: adx, plus_di, minus_di, tr_sum,
    plus_dm_sum, minus_dm_sum. State: the three sums and adx (before its seed: the running sum
    of DX)."""
    n = pi[0]
    tr, pdm, mdm, ax = st[0], st[1], st[2], st[3]
    for i in range(start, end):
        g = base + i
        j = i - start
        if g < n:
            tr = NAN
            pdm = NAN
            mdm = NAN
        elif g == n:
            tr = 0.0
            pdm = 0.0
            mdm = 0.0
            for q in range(i - n + 1, i + 1):
                tr += true_range(h, lw, c, q)
                p, m = _dm(h, lw, q)
                pdm += p
                mdm += m
        else:
            p, m = _dm(h, lw, i)
            tr = tr - tr / n + true_range(h, lw, c, i)
            pdm = pdm - pdm / n + p
            mdm = mdm - mdm / n + m
        vdi = g >= n and tr > 0.0
        pdi = 100.0 * pdm / tr if vdi else NAN
        mdi = 100.0 * mdm / tr if vdi else NAN
        dx = 0.0
        if vdi and pdi + mdi > 0.0:
            dx = 100.0 * abs(pdi - mdi) / (pdi + mdi)
        if g < n:
            ax = NAN
        elif g < 2 * n - 1:
            ax = dx if g == n else ax + dx
        elif g == 2 * n - 1:
            ax = (dx if g == n else ax + dx) / n
        else:
            ax = (ax * (n - 1) + dx) / n
        put(out, ok, col, j, ax, g >= 2 * n - 1)
        put(out, ok, col + 1, j, pdi, vdi)
        put(out, ok, col + 2, j, mdi, vdi)
        put(out, ok, col + 3, j, tr, g >= n)
        put(out, ok, col + 4, j, pdm, g >= n)
        put(out, ok, col + 5, j, mdm, g >= n)
    st[0], st[1], st[2], st[3] = tr, pdm, mdm, ax


@njit(cache=True)
def obv(c, v, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """On-balance volume: 0 at the first bar, then + volume when the close rises, - volume
    when it falls, unchanged when equal (a running sum from the store's first bar). Valid from
    0. State: obv (= the stored value)."""
    x = st[0]
    for i in range(start, end):
        if base + i == 0:
            x = 0.0
        else:  # both sums, then a select: no branch on the (random) direction of the close
            up = x + v[i]
            dn = x - v[i]
            x = up if c[i] > c[i - 1] else (dn if c[i] < c[i - 1] else x)
        put(out, ok, col, i - start, x, True)
    st[0] = x


@njit(cache=True)
def vwap(tp, v, an, base, start, end, st, out, ok, col):  # type: ignore[no-untyped-def]
    """Anchored VWAP: sum(tp v) / sum(v) since the anchor (UTC day or session occurrence:
    the bar's ``an`` value changes), tp = (h + l + c) / 3, sums sequential bar by bar; not
    valid while the anchor's volume is 0. Columns: value, cum_pv, cum_v (= the state)."""
    pv, cv = st[0], st[1]
    for i in range(start, end):
        j = i - start
        if base + i == 0 or an[i] != an[i - 1]:
            pv = tp[i] * v[i]
            cv = v[i]
        else:
            pv = pv + tp[i] * v[i]
            cv = cv + v[i]
        put(out, ok, col, j, pv / cv if cv > 0.0 else NAN, cv > 0.0)
        put(out, ok, col + 1, j, pv, True)
        put(out, ok, col + 2, j, cv, True)
    st[0], st[1] = pv, cv
