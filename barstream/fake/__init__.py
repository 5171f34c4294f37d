"""The fake Dukascopy upstream: an offline stand-in for the JSON API with a real HTTP
server, a simulated clock, deterministic data and injectable faults. A test and demo double
(supervisord's ``barstream:fake_upstream``, the rebuild benchmark's raw cache), not part of
the pipeline: no service imports it.

    python -m barstream.fake --help

Modules, one concept each (import names from them)::

    bars        DayBars, one day of 1m bars in integer points; the in-progress minute
    encoding    Dukascopy's candle JSON for a day, byte for byte (and back)
    histdata    the real HistData 1m files as UTC bars (Berlin − 6 h → UTC)
    generators  HistData tiling and the seeded random walk: (seed, symbol, side, day) → bars
    clock       SimClock, the simulated time (start, speed, set, advance)
    faults      the twelve fault kinds, their spec parser and matching
    upstream    FakeUpstream: routes, 404 rules, control plane, statistics, lifecycle
    handler     the HTTP/1.1 request handler (gzip, Date header, how each fault misbehaves)
    cache       generate_cache: generated days straight into a raw cache
    cli         the command line (--config FILE, serve, generate-cache)
"""
