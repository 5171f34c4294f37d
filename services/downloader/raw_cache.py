"""The raw cache: every response body the downloader keeps on disk, and every path of them.

Layout (docs/FORMAT.md §8; ``digest`` = ``body_digest``, 16 hex digits)::

    {root}/{SYMBOL}/{SIDE}/{YYYY}/{SYMBOL}-{SIDE}-{YYYYMMDD}.json          a final day
    {root}/_versions/{SYMBOL}/{SIDE}/{SYMBOL}-{SIDE}-{YYYYMMDD}.{digest}.json
                                                    an earlier version of a revised day
    {live}/{SYMBOL}-{SIDE}-{digest}.json            the body of a live journal record
    {root}/_skipped/{SYMBOL}/{SIDE}/{SYMBOL}-{SIDE}-{YYYYMMDD}.json
                                                    a day the user skipped (``Skip``)

- Final days only: ``put`` refuses the current (or a future) day by ``today()`` — a live day
  is never cached as final. A rebuild reads only the final days.
- Every file is written by ``fsio.atomic_write`` (FORMAT.md §9): a reader sees the old
  bytes or the whole new ones; ``durable=False`` skips the fsyncs (generated caches).
- ``body`` finds the body a journal record names by its digest: the live file, the final
  day, or the kept earlier version.
- ``prune_live`` removes live bodies no journal record names any more.
- ``put_skip`` records a user's decision to skip a day (``barstream skip-day``) beside the
  bodies, so it outlives every store: a rebuild journals that day version as an explicit
  gap, and so does a running downloader (``skips``, ``skips_stamp``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import msgspec

from barstream.services.downloader.source import SIDES, FetchResult, body_digest, utc_today
from barstream.shared import fsio

__all__ = ["RawCache", "Skip"]


class Skip(msgspec.Struct, frozen=True, kw_only=True):
    """A day the user skipped: the version with ``digest`` (16 hex digits; "" when the day
    had no body) is an explicit gap. ``error`` is why the day was bad, ``reason`` the user's
    words, ``skipped_ms`` when (UTC ms)."""

    symbol: str
    side: str
    day: dt.date
    digest: str
    reason: str
    skipped_ms: int
    error: str = ""

    @property
    def digest_int(self) -> int:
        return int(self.digest, 16) if self.digest else 0


_SKIP_DECODER = msgspec.json.Decoder(Skip)


class RawCache:
    """Final day responses, their earlier versions and the live bodies; see the module
    docstring. ``live``: the directory of live bodies (the downloader's; None elsewhere)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        today: Callable[[], dt.date] = utc_today,
        durable: bool = True,
        live: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.live = live
        self._today = today
        self._durable = durable
        #: (symbol, side, year) → that year's directory, checked once: building a path per
        #: file is a good part of replaying 7,000 cached days.
        self._dirs: dict[tuple[str, str, int], str] = {}
        if live is not None:
            live.mkdir(parents=True, exist_ok=True)

    # -- final days ----------------------------------------------------------------------

    def path(self, symbol: str, side: str, day: dt.date) -> Path:
        return Path(self._file(symbol, side, day))

    def has(self, symbol: str, side: str, day: dt.date) -> bool:
        return os.path.isfile(self._file(symbol, side, day))

    def get(self, symbol: str, side: str, day: dt.date) -> bytes | None:
        try:
            with open(self._file(symbol, side, day), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put(self, symbol: str, side: str, day: dt.date, body: bytes) -> int:
        """Store a final day's body atomically; returns its digest. Refuses today and later."""
        today = self._today()
        if day >= today:
            raise ValueError(
                f"{symbol}/{side}/{day.isoformat()}: not final (today is {today.isoformat()}); "
                "the current day is never cached"
            )
        fsio.atomic_write(self.path(symbol, side, day), body, durable=self._durable)
        return body_digest(body)

    def put_result(self, result: FetchResult) -> int:
        if result.live:
            raise ValueError(f"{result.url}: a live response is never cached as final")
        return self.put(result.symbol, result.side, result.day, result.body)

    def days(self, symbol: str, side: str) -> Iterator[dt.date]:
        """Cached days of one symbol/side in date order."""
        base = self.root / symbol / side
        if not base.is_dir():
            return
        prefix = f"{symbol}-{side}-"
        for year in sorted(p for p in base.iterdir() if p.is_dir() and p.name.isdigit()):
            for f in sorted(year.glob(f"{prefix}????????.json")):
                stamp = f.name[len(prefix) : -len(".json")]
                try:
                    yield dt.datetime.strptime(stamp, "%Y%m%d").date()
                except ValueError:
                    continue

    # -- earlier versions and live bodies ------------------------------------------------

    def version_path(self, symbol: str, side: str, day: dt.date, digest: int) -> Path:
        _check(symbol, side)
        name = f"{symbol}-{side}-{day:%Y%m%d}.{digest:016x}.json"
        return self.root / "_versions" / symbol / side / name

    def keep_version(self, symbol: str, side: str, day: dt.date, body: bytes) -> None:
        """Keep ``body`` (a day about to be replaced by its revision) under its digest."""
        path = self.version_path(symbol, side, day, body_digest(body))
        if not path.exists():
            fsio.atomic_write(path, body, durable=self._durable)

    # -- the user's skipped days -----------------------------------------------------------

    def skip_path(self, symbol: str, side: str, day: dt.date) -> Path:
        _check(symbol, side)
        return self.root / "_skipped" / symbol / side / f"{symbol}-{side}-{day:%Y%m%d}.json"

    def put_skip(self, skip: Skip) -> Path:
        path = self.skip_path(skip.symbol, skip.side, skip.day)
        fsio.atomic_write(path, msgspec.json.encode(skip) + b"\n", durable=self._durable)
        return path

    def skips(self, symbol: str, side: str) -> tuple[dict[dt.date, Skip], list[str]]:
        """The skipped days of one symbol/side, and the files that could not be read (each
        "path: why"; they skip nothing)."""
        out: dict[dt.date, Skip] = {}
        bad: list[str] = []
        base = self.skip_path(symbol, side, dt.date(2000, 1, 1)).parent
        with contextlib.suppress(FileNotFoundError):
            for f in sorted(base.glob(f"{symbol}-{side}-????????.json")):
                try:
                    skip = _SKIP_DECODER.decode(f.read_bytes())
                    int(skip.digest or "0", 16)  # a digest that is not hex fails here
                except (OSError, msgspec.DecodeError, ValueError) as e:
                    bad.append(f"{f}: {e}")
                    continue
                if (skip.symbol, skip.side) != (symbol, side) or f != self.skip_path(
                    symbol, side, skip.day
                ):
                    bad.append(f"{f}: names {skip.symbol}/{skip.side}/{skip.day}, not its file")
                    continue
                out[skip.day] = skip
        return out, bad

    def skips_stamp(self, symbol: str, side: str) -> int | None:
        """Changes whenever a skip of this symbol/side is written (the directory's mtime)."""
        try:
            return self.skip_path(symbol, side, dt.date(2000, 1, 1)).parent.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def live_path(self, symbol: str, side: str, digest: int) -> Path:
        assert self.live is not None, "this raw cache keeps no live bodies"
        _check(symbol, side)
        return self.live / _live_name(symbol, side, digest)

    def put_live(self, symbol: str, side: str, digest: int, body: bytes) -> None:
        fsio.atomic_write(self.live_path(symbol, side, digest), body, durable=self._durable)

    def prune_live(self, keep: Collection[tuple[str, str, int]]) -> None:
        """Remove the live bodies other than those of ``keep`` (symbol, side, digest)."""
        if self.live is None:
            return
        names = {_live_name(symbol, side, digest) for symbol, side, digest in keep}
        for old in self.live.glob("*.json"):
            if old.name not in names:
                with contextlib.suppress(OSError):
                    os.unlink(old)

    def body(
        self, symbol: str, side: str, day: dt.date, digest: int, *, live: bool
    ) -> bytes | None:
        """The body a journal record names (a live one's file, else the final day or the
        earlier version with this digest); None when it is gone."""
        if live:
            with contextlib.suppress(FileNotFoundError):
                return self.live_path(symbol, side, digest).read_bytes()
        body = self.get(symbol, side, day)
        if body is not None and body_digest(body) == digest:
            return body
        with contextlib.suppress(FileNotFoundError):
            return self.version_path(symbol, side, day, digest).read_bytes()
        return None

    def _file(self, symbol: str, side: str, day: dt.date) -> str:
        key = (symbol, side, day.year)
        base = self._dirs.get(key)
        if base is None:
            _check(symbol, side)
            base = self._dirs[key] = str(self.root / symbol / side / f"{day:%Y}")
        return f"{base}/{symbol}-{side}-{day:%Y%m%d}.json"


def _check(symbol: str, side: str) -> None:
    if side not in SIDES or not symbol or "/" in symbol or symbol.startswith("."):
        raise ValueError(f"not a cacheable symbol/side: {symbol!r}/{side!r}")


def _live_name(symbol: str, side: str, digest: int) -> str:
    return f"{symbol}-{side}-{digest:016x}.json"
