"""A raw cache written by the fake's generator, without a server: the rebuild benchmark's
and the tests' input.

``generate_cache`` writes one final day per file in the downloader's ``RawCache`` layout:
the generator's day encoded as Dukascopy would send it (the recorded responses are not
used), so a downloader in ``cache_only`` mode reads them as if it had fetched them, empty
weekend days included. Each file is written atomically;
durability is one ``os.sync()`` at the end instead of one fsync per file.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from barstream.fake.encoding import encode_candles
from barstream.fake.generators import BarGenerator, make_generator
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import day_start_ms


def generate_cache(
    root: Path | str,
    symbol: str,
    side: str,
    start: dt.date,
    end: dt.date,
    *,
    seed: int = 1,
    real_dir: Path | None = None,
    durable: bool = True,
    generator: BarGenerator | None = None,
) -> int:
    """Write generated final days ``start..end`` (inclusive) into a raw cache at ``root`` in
    the RawCache layout; returns the number of day files written. Each file is written
    atomically; with ``durable`` one ``os.sync()`` at the end replaces thousands of fsyncs.
    ``real_dir`` as for ``make_generator`` (None: the seeded random walk); ``generator``
    replaces both (e.g. ``universe.UniverseGenerator``)."""
    if generator is None:
        generator = make_generator(seed, real_dir)
    cache = RawCache(root, today=lambda: dt.date.max, durable=False)
    written = 0
    day = start
    while day <= end:
        body = encode_candles(
            generator.day(symbol, side, day), empty_timestamp_ms=day_start_ms(day)
        )
        cache.put(symbol, side, day, body)
        written += 1
        day += dt.timedelta(days=1)
    if durable:
        os.sync()
    return written
