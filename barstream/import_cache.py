"""``barstream import-cache PATH``: the original batch project's download cache as raw days.

The original project keeps one JSON API response per symbol and day, BID only::

    PATH/cache/YYYY/MM/SYMBOL_YYYYMMDD.json     a final (historical) day
    PATH/data/temp/SYMBOL_YYYYMMDD.json         the current day, still growing (live)

(``PATH`` may also be the ``cache`` folder itself). Each file is checked before it enters
the raw cache (``data_dir/raw``, docs/FORMAT.md §8), and every refusal is reported with the
file and why — nothing is taken on trust:

- the name is ``SYMBOL_YYYYMMDD.json`` with a symbol of the configuration (``--all`` takes
  every well-formed symbol) under the ``YYYY/MM`` folders of its own date;
- the day is final: before today (UTC); the original's live files are partial days: they
  are left (and said so), the downloader fetches those days itself;
- the body decodes exactly as the transformer decodes it (``decode_candles``: the header, the
  integer-point deltas, times inside the day and increasing, prices and volumes);
- a day the raw cache already has is left as it is: the same bytes count as present, other
  bytes are reported (the cache's version is what the stores were built from; ``barstream
  backfill --refetch`` asks Dukascopy again).

An accepted file is hard-linked into the raw cache when both are on one filesystem (no copy:
the original writes a new file and renames it over the old one, so the link keeps the bytes
that were checked), else copied with an atomic, durable write. ``barstream rebuild`` then
turns the raw days into stores. The command exits 1 when any file was refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tqdm import tqdm

from barstream import configs
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import day_start_ms, utc_today
from barstream.services.transformer.transform import decode_candles
from barstream.shared import fsio
from barstream.shared.config import SYMBOL_RE, Config
from barstream.shared.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, PayloadInvalid

#: The only side the original project downloads.
SIDE: Final = "BID"
_NAME: Final = re.compile(r"^(?P<symbol>[^_/]+)_(?P<stamp>\d{8})\.json$")
#: A day of minute candles is well under 1 MB; a bigger file is not one.
MAX_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Refused:
    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


@dataclass
class ImportResult:
    linked: int = 0
    copied: int = 0
    present: int = 0  # the raw cache has the same bytes already
    bars: int = 0
    refused: list[Refused] = field(default_factory=list)
    other_symbols: Counter[str] = field(default_factory=Counter)  # files of unconfigured symbols
    live_left: list[Path] = field(default_factory=list)  # the original's partial (live) days
    other_files: list[Path] = field(default_factory=list)  # not .json: not cache files
    days: dict[str, tuple[dt.date, dt.date]] = field(default_factory=dict)  # symbol → range

    @property
    def imported(self) -> int:
        return self.linked + self.copied


def cache_dir(path: Path) -> Path:
    """The folder holding the ``YYYY/MM`` tree: ``PATH/cache`` or ``PATH`` itself."""
    if (path / "cache").is_dir():
        return path / "cache"
    return path


def live_dir(path: Path) -> Path | None:
    live = path / "data" / "temp"
    return live if live.is_dir() else None


def original_files(root: Path) -> Iterator[Path]:
    """Every file under the cache tree, in path order (refusals name the odd ones)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def import_cache(
    cfg: Config,
    source: Path,
    *,
    symbols: list[str] | None = None,
    every_symbol: bool = False,
    link: bool = True,
    progress: bool = True,
    today: dt.date | None = None,
) -> ImportResult:
    """Check and take every file of the original's cache at ``source`` (module docstring)."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a directory (the original project's folder)")
    wanted = set(symbols if symbols is not None else cfg.pipeline.symbols)
    today = today or utc_today()
    raw = RawCache(configs.data_root(cfg) / "raw", today=lambda: today)
    res = ImportResult()
    root = cache_dir(source)
    files = list(original_files(root))
    live = live_dir(source)
    live_files = list(original_files(live)) if live is not None else []
    res.live_left = live_files
    for f in tqdm(files, unit="file", desc="import-cache", disable=not progress):
        _take(f, root, raw, wanted, every_symbol, link, today, res)
    return res


def _take(
    f: Path,
    root: Path,
    raw: RawCache,
    wanted: set[str],
    every_symbol: bool,
    link: bool,
    today: dt.date,
    res: ImportResult,
) -> None:
    if f.suffix != ".json":  # the original's notes, its .tmp files mid-write …
        res.other_files.append(f)
        return
    m = _NAME.match(f.name)
    if m is None:
        res.refused.append(Refused(f, "not a day file (SYMBOL_YYYYMMDD.json)"))
        return
    symbol = m["symbol"]
    try:
        day = dt.datetime.strptime(m["stamp"], "%Y%m%d").date()
    except ValueError:
        res.refused.append(Refused(f, f"{m['stamp']} is not a date"))
        return
    if not SYMBOL_RE.match(symbol):
        res.refused.append(Refused(f, f"{symbol!r} is not a symbol (EUR-USD, DEU.IDX-EUR …)"))
        return
    if symbol not in wanted and not every_symbol:
        res.other_symbols[symbol] += 1
        return
    rel = f.parent.relative_to(root).parts
    if rel != (f"{day:%Y}", f"{day:%m}"):
        where = "/".join(rel) or "."
        res.refused.append(Refused(f, f"in {where}/, not {day:%Y/%m}/: a misplaced file"))
        return
    if day >= today:
        res.refused.append(Refused(f, f"{day} is not final (today is {today}, UTC)"))
        return
    size = f.stat().st_size
    if size > MAX_BYTES:
        res.refused.append(Refused(f, f"{size:,} bytes: over {MAX_BYTES:,}, not a day of candles"))
        return
    body = f.read_bytes()
    try:
        bars = decode_candles(
            body, symbol=symbol, side=SIDE, day_ms=day_start_ms(day), live=False, src_offset=0
        )
    except PayloadInvalid as e:
        why = Exception.__str__(e)  # without the service's hint: nothing is held here
        res.refused.append(
            Refused(
                f,
                f"does not decode: {why}; not imported (`barstream backfill --start {day} "
                f"--end {day} --symbols {symbol} --sides {SIDE}` fetches the day)",
            )
        )
        return
    old = raw.get(symbol, SIDE, day)
    if old is not None:
        if old == body:
            res.present += 1
        else:
            res.refused.append(
                Refused(
                    f,
                    f"the raw cache holds another version of {symbol}/{SIDE}/{day} "
                    f"({raw.path(symbol, SIDE, day)}): kept; `barstream backfill --refetch "
                    f"--start {day} --end {day} --symbols {symbol} --sides {SIDE}` asks "
                    "Dukascopy again",
                )
            )
        return
    if link and _link(f, raw.path(symbol, SIDE, day)):
        res.linked += 1
    else:
        raw.put(symbol, SIDE, day, body)
        res.copied += 1
    res.bars += len(bars)
    first, last = res.days.get(symbol, (day, day))
    res.days[symbol] = (min(first, day), max(last, day))


def _link(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (made durable); False when they are on two filesystems
    (or links are not allowed there): the caller copies."""
    fsio.make_dirs(dst.parent)
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False
        raise
    fsio.fsync_dir(dst.parent)
    return True


def cmd_import_cache(args: argparse.Namespace) -> int:
    cfg = configs.load(args.config)
    symbols = args.symbols.split(",") if args.symbols else None
    try:
        res = import_cache(
            cfg,
            args.path,
            symbols=symbols,
            every_symbol=args.all,
            link=not args.copy,
            progress=not args.quiet,
        )
    except FileNotFoundError as e:
        print(f"import-cache: {e}", file=sys.stderr)
        return EXIT_USAGE
    for r in res.refused:
        print(f"import-cache: refused {r}", file=sys.stderr)
    if res.live_left:
        print(
            f"import-cache: left {len(res.live_left):,} live files of the original (partial "
            f"days, in {res.live_left[0].parent}): the downloader fetches those days itself",
            file=sys.stderr,
        )
    for f in res.other_files:
        print(f"import-cache: left {f}: not a day file (SYMBOL_YYYYMMDD.json)", file=sys.stderr)
    for sym, n in sorted(res.other_symbols.items()):
        print(
            f"import-cache: left {n:,} files of {sym}: not in pipeline.symbols (add it, or "
            "pass --all or --symbols)",
            file=sys.stderr,
        )
    for sym, (first, last) in sorted(res.days.items()):
        print(f"import-cache: {sym}/{SIDE} {first} .. {last}", file=sys.stderr)
        if first < cfg.pipeline.start_date:
            print(
                f"import-cache: {sym}: days before pipeline.start_date "
                f"({cfg.pipeline.start_date}) stay in the raw cache but no store holds them: "
                f"set pipeline.start_date = {first} to build them",
                file=sys.stderr,
            )
    if res.days and "ASK" in cfg.pipeline.sides:
        print(
            "import-cache: the original keeps BID only: fetch the ASK side with `barstream "
            "backfill --sides ASK --start … --end …` (rebuild lists its days as gaps until then)",
            file=sys.stderr,
        )
    how = f"{res.linked:,} hard-linked, {res.copied:,} copied"
    print(
        f"import-cache: {res.imported:,} days ({how}; {res.bars:,} 1m bars) into "
        f"{configs.data_root(cfg) / 'raw'}, {res.present:,} there already, "
        f"{len(res.refused):,} refused"
        + (f"; now `barstream rebuild -c {args.config}`" if res.imported else ""),
        file=sys.stderr,
    )
    return EXIT_ERROR if res.refused else EXIT_OK
