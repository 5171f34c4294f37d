"""Per-instrument history starts from the API's instrument metadata.

``GET {base}/v1/instruments/{CODE}`` (``source.instrument_url``) answers a JSON document
whose ``histories`` list has ``{"period": "MINUTE", "from": ms}``: the first minute candle
(``../shared/data/real/dukascopy-json/instrument-EUR-USD.json``: 2003-05-04 19:00 UTC). The
UTC day of that candle is the first day worth asking for; no request asks for a day before.

- ``history_starts`` resolves the start of every symbol that ``downloader.history_start``
  does not name (the configuration wins): from the cached document
  ``{raw}/_meta/{CODE}.json`` when it is there, else fetched once (with the budget and
  retries of a day), checked (it must parse and name a MINUTE start) and cached atomically.
- ``cached_starts`` is the same from the cached documents only, never asking: the
  downloader service uses it at start (a backfill caches the documents; a service starting
  while the upstream is down must not wait on metadata before following the live day).
- A document that cannot be had or does not parse is logged as a warning naming the symbol,
  the URL or file, the reason and what follows (no start: days before the first candle are
  asked for and answer 404) — never silently; a bad cached document is fetched again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from barstream.services.downloader.source import HttpSource
from barstream.shared import fsio
from barstream.shared.errors import SourceError

__all__ = ["META_DIR", "cached_starts", "history_start_of", "history_starts", "meta_path"]

log = logging.getLogger("barstream.downloader.instruments")

#: Under the raw cache root.
META_DIR = "_meta"


def meta_path(raw_root: Path, code: str) -> Path:
    return raw_root / META_DIR / f"{code}.json"


def history_start_of(document: bytes) -> dt.date:
    """The UTC day of the first minute candle a metadata document names (ValueError if
    it names none)."""
    doc = json.loads(document)
    histories = doc.get("histories") if isinstance(doc, dict) else None
    if not isinstance(histories, list):
        raise ValueError("no 'histories' list")
    for entry in histories:
        if isinstance(entry, dict) and entry.get("period") == "MINUTE":
            ms = entry.get("from")
            if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
                raise ValueError(f"MINUTE 'from' = {ms!r}: not ms since the epoch")
            return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
    raise ValueError("no MINUTE entry in 'histories'")


async def history_starts(
    source: HttpSource,
    raw_root: Path,
    symbols: Iterable[str],
    configured: Mapping[str, dt.date],
) -> dict[str, dt.date]:
    """The history start of every symbol: ``configured`` first, else its (cached or
    fetched) metadata document; a symbol whose document cannot be had has no entry."""
    starts: dict[str, dt.date] = {}
    for code in dict.fromkeys(symbols):
        if code in configured:
            starts[code] = configured[code]
            continue
        path = meta_path(raw_root, code)
        if path.is_file():
            try:
                starts[code] = history_start_of(path.read_bytes())
                continue
            except (OSError, ValueError) as e:
                log.warning(
                    "%s: cached instrument metadata %s unusable (%s): fetching it again",
                    code,
                    path,
                    e,
                )
        try:
            result = await source.fetch_instrument(code)
            start = history_start_of(result.body)
        except (SourceError, ValueError) as e:
            log.warning(
                "%s: no instrument metadata (%s): no history start, so days before its first "
                "candle are asked for (and answer 404); set downloader.history_start.%s to "
                "skip them",
                code,
                e,
                code,
            )
            continue
        fsio.atomic_write(path, result.body, durable=True)
        starts[code] = start
    return starts


def cached_starts(
    raw_root: Path, symbols: Iterable[str], configured: Mapping[str, dt.date]
) -> dict[str, dt.date]:
    """``configured``, plus the start of every other symbol whose metadata document is
    cached (``raw/_meta``); a cached document that does not parse is logged and skipped."""
    starts = dict(configured)
    for code in dict.fromkeys(symbols):
        path = meta_path(raw_root, code)
        if code in starts or not path.is_file():
            continue
        try:
            starts[code] = history_start_of(path.read_bytes())
        except (OSError, ValueError) as e:
            log.warning(
                "%s: cached instrument metadata %s unusable (%s): no history start; "
                "barstream backfill fetches it again",
                code,
                path,
                e,
            )
    return starts
