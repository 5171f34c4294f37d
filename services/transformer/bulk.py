"""Decode many candle-JSON days at once — the transformer's catch-up and rebuild path.

Contract
--------
``decode_days(bodies, symbol=, side=, day_ms=[...], live=[...], src_offsets=[...])`` gives, for
each day, exactly what ``transform.decode_candles`` gives for it: its records (byte-identical)
or the ``PayloadInvalid`` it raises. Pure, like ``decode_candles``.

How: it parses each integer field of a chunk of ``CHUNK_DAYS`` days with one numpy call and
runs every rule (``rules``) once over the chunk's combined arrays; when any rule fails (or any
day is unusual), it decodes that chunk day by day with ``decode_candles`` for the exact errors.
Good days are views of one array per chunk.
"""

from __future__ import annotations

from typing import Final

import msgspec
import numpy as np

from barstream.services.transformer.candles import (
    FAST_DECODER,
    INT_CHARS,
    INT_KEYS,
    MAX_POINTS,
    MAX_TIME_STEPS,
)
from barstream.services.transformer.rules import first_points_or_none, multiplier_decimals
from barstream.services.transformer.transform import decode_candles
from barstream.shared.errors import PayloadInvalid
from barstream.shared.record import FLAG_DAY_END, FLAG_LIVE, FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import DAY_MS, MINUTE_MS

#: Days decoded together by ``decode_days``; a bad day costs its chunk a day-by-day decode.
CHUNK_DAYS: Final = 64
#: Bound on ``timestamp`` that keeps the batch's int64 time arithmetic from overflowing
#: (|cumsum(times)| * 60000 < 2**58); beyond it the chunk is decoded day by day.
_MAX_BATCH_TIMESTAMP: Final = 2**61


def decode_days(
    bodies: list[bytes],
    *,
    symbol: str,
    side: str,
    day_ms: list[int],
    live: list[bool],
    src_offsets: list[int],
) -> list[np.ndarray | PayloadInvalid]:
    """Decode many candle-JSON days: for each, its records or its ``PayloadInvalid`` — the
    same as ``decode_candles`` on that day alone. Good days are views of one array per chunk."""
    if not len(bodies) == len(day_ms) == len(live) == len(src_offsets):
        raise ValueError(
            f"{len(bodies)} bodies, {len(day_ms)} days, {len(live)} live flags, "
            f"{len(src_offsets)} offsets"
        )
    out: list[np.ndarray | PayloadInvalid] = []
    for a in range(0, len(bodies), CHUNK_DAYS):
        b = a + CHUNK_DAYS
        chunk = _decode_chunk(bodies[a:b], day_ms[a:b], live[a:b], src_offsets[a:b])
        if chunk is not None:
            out.extend(chunk)
            continue
        for body, d, lv, off in zip(
            bodies[a:b], day_ms[a:b], live[a:b], src_offsets[a:b], strict=True
        ):
            try:
                out.append(
                    decode_candles(
                        body, symbol=symbol, side=side, day_ms=d, live=lv, src_offset=off
                    )
                )
            except PayloadInvalid as e:
                out.append(e)
    return out


def _decode_chunk(
    bodies: list[bytes], day_ms: list[int], live: list[bool], src_offsets: list[int]
) -> list[np.ndarray] | None:
    """Every day's records, or None when any day is unusual or breaks any rule (the caller
    then decodes day by day). Accepts exactly what ``decode_candles``'s fast path accepts."""
    try:
        days = [FAST_DECODER.decode(body) for body in bodies]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    n_days = len(days)
    # Header rules, every day (also empty ones).
    decimals: list[int] = []
    for p in days:
        k = multiplier_decimals(p.multiplier)
        if k is None or p.shift != MINUTE_MS or p.timestamp % MINUTE_MS:
            return None
        if not -_MAX_BATCH_TIMESTAMP < p.timestamp < _MAX_BATCH_TIMESTAMP:
            return None
        decimals.append(k)
    # The integer arrays: one parse per field over the whole chunk.
    n_counts: np.ndarray | None = None
    inner: dict[str, list[memoryview]] = {}
    for key in INT_KEYS:
        raws = [memoryview(getattr(p, key)) for p in days]
        joined = b"".join(raws)
        # Every day a flat array of integers (JSON-valid already: no "[1,,2]", no "--1").
        if joined.translate(None, INT_CHARS) != b"[]" * n_days:
            return None
        buf = np.frombuffer(joined, dtype=np.uint8)
        day_at = np.flatnonzero(buf == 0x5B)  # each day's "["
        commas = np.flatnonzero(buf == 0x2C)
        key_counts = np.diff(np.searchsorted(commas, day_at), append=len(commas))
        key_counts += buf[day_at + 1] != 0x5D  # a non-empty array: one more value than commas
        if n_counts is None:
            n_counts = key_counts
        elif not np.array_equal(key_counts, n_counts):
            return None  # unequal lengths (or an empty day with values): day by day
        inner[key] = [raw[1:-1] for raw in raws if len(raw) > 2]
    assert n_counts is not None
    total = int(n_counts.sum())
    # One parse for the times, one for the four price fields (rows of one array).
    if total:
        times = _parse_joined(inner["times"], total, MAX_TIME_STEPS)
        deltas = _parse_joined(
            [v for key in ("opens", "highs", "lows", "closes") for v in inner[key]],
            4 * total,
            MAX_POINTS,
        )
        if times is None or deltas is None:
            return None
        points = deltas.reshape(4, total)
    else:
        times = np.zeros(0, dtype=np.int64)
        points = np.zeros((4, 0), dtype=np.int64)
    n: list[int] = n_counts.tolist()
    if [len(p.volumes) for p in days] != n:
        return None
    # Days with bars: first prices; empty days need nothing more (as decode_candles).
    keep = [i for i in range(n_days) if n[i]]
    firsts = np.empty((4, len(keep)), dtype=np.int64)
    for j, i in enumerate(keep):
        first = first_points_or_none(days[i], decimals[i])
        if first is None:
            return None
        firsts[:, j] = first
    counts_kept = np.array([n[i] for i in keep], dtype=np.int64)
    starts = np.zeros(len(keep), dtype=np.int64)
    np.cumsum(counts_kept[:-1], out=starts[1:])
    # times: steps >= 1 after each day's first bar; first and last bar inside the day.
    if total:
        step_ok = times >= 1
        step_ok[starts] = True
        if not step_ok.all():
            return None
    timestamps = np.array([days[i].timestamp for i in keep], dtype=np.int64)
    days_ms = np.array([day_ms[i] for i in keep], dtype=np.int64)
    sums = np.add.reduceat(times, starts) if total else np.zeros(0, dtype=np.int64)
    first_ms = timestamps + times[starts] * MINUTE_MS
    last_ms = timestamps + sums * MINUTE_MS
    if len(keep) and (
        (first_ms < days_ms).any()
        or (first_ms >= days_ms + DAY_MS).any()
        or (last_ms >= days_ms + DAY_MS).any()
    ):
        return None
    # Prices: per-day cumsum over the combined arrays (each day's first price folded in).
    _segment_cumsum(points, starts, firsts)
    if total and (
        points.min() <= 0
        or (points[1] < points[2]).any()
        or (points[0] < points[2]).any()
        or (points[0] > points[1]).any()
        or (points[3] < points[2]).any()
        or (points[3] > points[1]).any()
    ):
        return None
    # Records, as transform._records builds them day by day, written as 8 words per record in one pass.
    words = np.empty((8, total), dtype=np.uint64)
    volumes = words[5].view(np.float64)
    if keep:
        np.concatenate([np.array(days[i].volumes, dtype=np.float64) for i in keep], out=volumes)
    if not np.isfinite(volumes).all() or (volumes < 0).any():
        return None
    ts_ms = words[0].view(np.int64)
    ts_ms[:] = times
    _segment_cumsum(ts_ms.reshape(1, total), starts, np.zeros((1, len(keep)), dtype=np.int64))
    ts_ms *= MINUTE_MS
    ts_ms += np.repeat(timestamps, counts_kept)
    scales = np.array([float(10 ** decimals[i]) for i in keep], dtype=np.float64)
    np.divide(points, np.repeat(scales, counts_kept), out=words[1:5].view(np.float64))
    words[6].view(np.int64)[:] = np.repeat(
        np.array([src_offsets[i] for i in keep], dtype=np.int64), counts_kept
    )
    # word 7: src_count (u4, = 1) | flags (u2) << 32 | session, reserved (0)
    live_kept = np.array([live[i] for i in keep], dtype=bool)
    flags = np.repeat(np.where(live_kept, FLAG_LIVE, 0).astype(np.uint64), counts_kept)
    ends = starts + counts_kept - 1
    flags[ends] |= np.where(live_kept, FLAG_PROVISIONAL, FLAG_DAY_END).astype(np.uint64)
    flags <<= np.uint64(32)
    flags |= np.uint64(1)
    words[7] = flags
    rec = np.empty(total, dtype=RECORD_DTYPE)
    rec.view(np.uint64).reshape(total, 8)[:] = words.T
    out: list[np.ndarray] = []
    pos = 0
    for i in range(n_days):
        out.append(rec[pos : pos + n[i]])
        pos += n[i]
    return out


def _parse_joined(parts: list[memoryview], count: int, bound: int) -> np.ndarray | None:
    """The integers of comma-separated ``parts`` (checked digits, commas and minus signs
    only), or None unless there are exactly ``count`` of them, all within ``bound``."""
    values = np.fromstring(b",".join(parts), dtype=np.int64, sep=",")
    if len(values) != count or values.max() > bound or values.min() < -bound:
        return None
    return values


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, firsts: np.ndarray) -> None:
    """In place, each row: every segment's own cumsum plus its first value (``firsts[:, j]``
    for the segment starting at ``starts[j]``) — one cumsum over all segments, with the
    previous segment's last value folded out at each start (exact int64 throughout)."""
    if not values.shape[1]:
        return
    ends_at = firsts + np.add.reduceat(values, starts, axis=1)  # each segment's last value
    values[:, starts] += firsts
    values[:, starts[1:]] -= ends_at[:, :-1]
    np.cumsum(values, axis=1, out=values)
