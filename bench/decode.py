"""Decode rate of the transformer's pure core on full generated days.

``run()`` returns ``[(name, value, unit), ...]``; ``python -m bench.decode`` prints a table.
Days are weekdays from the fake upstream's seeded random walk (about 1,410 bars each, the
shape of a real trading day), encoded exactly like Dukascopy; timing is the best of several
passes over all of them, so the figure is the decoder's, not the machine's noise. ``decode.*``
is ``decode_candles`` one day at a time, ``decode.batch_*`` is ``decode_days`` over all of them.
"""

from __future__ import annotations

import datetime as dt
import time

from barstream.fake.encoding import encode_candles
from barstream.fake.generators import RandomWalkGenerator
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.bulk import decode_days
from barstream.services.transformer.transform import decode_candles

DAYS = 250
PASSES = 5


def _weekdays(n: int) -> list[dt.date]:
    days: list[dt.date] = []
    day = dt.date(2024, 1, 1)
    while len(days) < n:
        if day.weekday() < 4:  # Monday to Thursday: full days
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def run() -> list[tuple[str, float, str]]:
    gen = RandomWalkGenerator(seed=1)
    bodies = []
    for day in _weekdays(DAYS):
        body = encode_candles(gen.day("EUR-USD", "BID", day), empty_timestamp_ms=day_start_ms(day))
        bodies.append((body, day_start_ms(day)))
    bars = sum(
        len(decode_candles(b, symbol="EUR-USD", side="BID", day_ms=d, live=False, src_offset=0))
        for b, d in bodies
    )
    best = float("inf")
    for _ in range(PASSES):
        began = time.perf_counter()
        for body, day_ms in bodies:
            decode_candles(
                body, symbol="EUR-USD", side="BID", day_ms=day_ms, live=False, src_offset=0
            )
        best = min(best, time.perf_counter() - began)
    batch = float("inf")
    days = [day_ms for _, day_ms in bodies]
    raw = [body for body, _ in bodies]
    for _ in range(PASSES):
        began = time.perf_counter()
        decode_days(
            raw,
            symbol="EUR-USD",
            side="BID",
            day_ms=days,
            live=[False] * len(raw),
            src_offsets=[0] * len(raw),
        )
        batch = min(batch, time.perf_counter() - began)
    return [
        ("decode.bars_per_s", bars / best, "bars/s"),
        ("decode.day_ms", best / len(bodies) * 1000, "ms/day"),
        ("decode.batch_bars_per_s", bars / batch, "bars/s"),
        ("decode.batch_day_ms", batch / len(bodies) * 1000, "ms/day"),
        ("decode.bars_per_day", bars / len(bodies), "bars"),
    ]


def main() -> None:
    rows = run()
    width = max(len(name) for name, _, _ in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>14,.3f}  {unit}")


if __name__ == "__main__":
    main()
