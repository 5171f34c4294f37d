"""``barstream import-cache``: the original project's download cache, checked, into the raw
cache, and through ``rebuild`` to the same stores as the same days fetched from the (fake)
Dukascopy API over HTTP.

The original-layout cache is made here from the API's own answers (``cache/YYYY/MM/
EUR-USD_YYYYMMDD.json``, the bytes the original would have saved): the recorded real day
2019-02-04 served byte for byte, the other days generated from the real HistData series in
the API's exact encoding; plus the files an old cache really holds — a live file in
``data/temp``, a broken day, a misplaced one, another symbol's, a stray file."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream import cli as barstream_cli
from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.import_cache import import_cache
from barstream.paths import real_data_dir
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import day_start_ms
from barstream.shared import config as config_mod
from barstream.shared.errors import ConfigError
from barstream.shared.store import Store
from tests.support.ops import cli, pipeline_config, write_config

FIRST, LAST = dt.date(2019, 1, 31), dt.date(2019, 2, 8)
REAL_DAY = dt.date(2019, 2, 4)
REAL = real_data_dir()
RECORDED = REAL / "dukascopy-json" / "bp.markets.ingest" / "EUR-USD_20190204.json"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    if not RECORDED.is_file():
        pytest.skip(f"{RECORDED} is absent (../shared/data/real): no recorded original day")
    clock = SimClock(day_start_ms(dt.date(2019, 2, 12)), speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=REAL) as up:
        yield up


def api_day(fake: FakeUpstream, day: dt.date, symbol: str = "EUR-USD") -> bytes:
    url = f"{fake.url}/v1/candles/minute/{symbol}/BID/{day.year}/{day.month}/{day.day}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
        return body


def original_layout(root: Path, fake: FakeUpstream) -> None:
    """What the original project's folder holds after downloading FIRST..LAST."""
    day = FIRST
    while day <= LAST:
        f = root / "cache" / f"{day:%Y}" / f"{day:%m}" / f"EUR-USD_{day:%Y%m%d}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(api_day(fake, day))
        day += dt.timedelta(days=1)
    # another symbol the configuration does not name, a stray file, a live file
    (root / "cache" / "2019" / "02" / "USD-JPY_20190205.json").write_bytes(
        api_day(fake, dt.date(2019, 2, 5), "USD-JPY")
    )
    (root / "cache" / "2019" / "02" / "notes.txt").write_text("downloaded with cron\n")
    (root / "data" / "temp").mkdir(parents=True)
    (root / "data" / "temp" / "EUR-USD_20190212.json").write_bytes(b'{"partial": true}')


def stores(data: Path, service: str, tf: str) -> np.ndarray:
    with Store.open(data / service / "EUR-USD" / "BID" / f"{tf}.bars", writable=False) as s:
        return s.snapshot()


@pytest.mark.timeout(240)
def test_original_cache_through_import_and_rebuild_equals_the_api_days(
    tmp_path: Path, fake: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    original = tmp_path / "original"
    original_layout(original, fake)
    # the recorded day is the original's own file, as its repository holds it
    assert api_day(fake, REAL_DAY) == RECORDED.read_bytes()
    configs = {}
    for name in ("fetched", "imported"):
        (tmp_path / name / "run").mkdir(parents=True)
        cfg = pipeline_config(
            tmp_path / name / "run", tmp_path / name / "data", fake_port=fake.port,
            start_date=str(FIRST),
        )  # fmt: skip
        cfg["pipeline"]["symbols"] = ["EUR-USD"]
        cfg["downloader"].update(base_url=fake.url, end_date=LAST, cache_only=True)
        configs[name] = write_config(tmp_path / f"{name}.toml", cfg)

    # A: the days fetched from the API over HTTP
    fetched = barstream_cli.main(
        ["backfill", "-c", str(configs["fetched"]), "-q", "--start", str(FIRST), "--end", str(LAST)]
    )
    assert fetched == 0, capsys.readouterr().err
    capsys.readouterr()

    # B: the original's cache, imported
    code = barstream_cli.main(["import-cache", str(original), "-c", str(configs["imported"]), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "import-cache: 9 days (9 hard-linked, 0 copied;" in err, err
    assert "left 1 live files of the original" in err, err
    assert "notes.txt: not a day file" in err, err
    assert "left 1 files of USD-JPY: not in pipeline.symbols" in err, err
    assert "import-cache: EUR-USD/BID 2019-01-31 .. 2019-02-08" in err, err
    raw = RawCache(tmp_path / "imported" / "data" / "raw")
    linked = raw.path("EUR-USD", "BID", REAL_DAY)
    src = original / "cache" / "2019" / "02" / "EUR-USD_20190204.json"
    assert os.stat(linked).st_ino == os.stat(src).st_ino  # a hard link, not a copy
    for day in RawCache(tmp_path / "fetched" / "data" / "raw").days("EUR-USD", "BID"):
        assert raw.get("EUR-USD", "BID", day) == RawCache(
            tmp_path / "fetched" / "data" / "raw"
        ).get("EUR-USD", "BID", day), day

    for name in ("fetched", "imported"):
        done = cli("rebuild", "-c", str(configs[name]), "-q", "--var", str(tmp_path / name / "var"))
        assert done.returncode == 0, done.stdout + done.stderr
    a, b = tmp_path / "fetched" / "data", tmp_path / "imported" / "data"
    for service, tf in [("aggregator", "1m"), ("resampler", "1m"), ("resampler", "1h"),
                        ("resampler", "1d"), ("gateway", "1h")]:  # fmt: skip
        x, y = stores(a, service, tf), stores(b, service, tf)
        assert len(x) > 0 and x.tobytes() == y.tobytes(), (service, tf)
    m1 = stores(b, "aggregator", "1m")
    day0 = day_start_ms(REAL_DAY)
    real = m1[(m1["ts_ms"] >= day0) & (m1["ts_ms"] < day0 + 86_400_000)]
    assert len(real) == 1440  # the real EURUSD day: 1,440 bars, no gaps


def test_bad_files_are_refused_each_with_why(
    tmp_path: Path, fake: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    original = tmp_path / "original"
    good = api_day(fake, dt.date(2019, 2, 5))
    feb = original / "cache" / "2019" / "02"
    feb.mkdir(parents=True)
    (feb / "EUR-USD_20190205.json").write_bytes(good)
    broken = json.loads(good)
    broken["times"][10] = -3
    (feb / "EUR-USD_20190206.json").write_text(json.dumps(broken))
    (feb / "EUR-USD_20190207.json").write_bytes(good[: len(good) // 2])  # cut short
    (original / "cache" / "2019" / "03").mkdir()
    (original / "cache" / "2019" / "03" / "EUR-USD_20190208.json").write_bytes(good)
    (feb / "EUR-USD_20190231.json").write_bytes(good)
    (feb / "eurusd_20190205.json").write_bytes(good)
    (tmp_path / "run").mkdir()
    cfg = pipeline_config(tmp_path / "run", tmp_path / "data", fake_port=fake.port)
    config = write_config(tmp_path / "c.toml", cfg)
    # a different version of 02-05 is in the raw cache already: kept, reported
    raw = RawCache(tmp_path / "data" / "raw")
    raw.put("EUR-USD", "BID", dt.date(2019, 2, 5), good.replace(b"}", b" }", 1))

    code = barstream_cli.main(["import-cache", str(original), "-c", str(config), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    refused = sorted(x for x in err.splitlines() if x.startswith("import-cache: refused "))
    assert len(refused) == 6, err
    why = {}
    for line in refused:
        f = Path(line.split(" ")[2].rstrip(":"))
        why[f"{f.name}@{f.parent.name}"] = line
    assert "EUR-USD/BID/2019-02-06: times[10]: step -3" in why["EUR-USD_20190206.json@02"]
    assert "backfill --start 2019-02-06 --end 2019-02-06" in why["EUR-USD_20190206.json@02"]
    assert "does not decode" in why["EUR-USD_20190207.json@02"]
    assert "in 2019/03/, not 2019/02/: a misplaced file" in why["EUR-USD_20190208.json@03"]
    assert "20190231 is not a date" in why["EUR-USD_20190231.json@02"]
    assert "'eurusd' is not a symbol" in why["eurusd_20190205.json@02"]
    assert "another version of EUR-USD/BID/2019-02-05" in why["EUR-USD_20190205.json@02"]
    assert "backfill --refetch --start 2019-02-05" in why["EUR-USD_20190205.json@02"]
    assert not raw.has("EUR-USD", "BID", dt.date(2019, 2, 6))  # nothing bad stored
    assert not raw.has("EUR-USD", "BID", dt.date(2019, 2, 7))
    assert "0 days" in err and "6 refused" in err, err

    # today's file is never final; --copy copies (a file of its own, the same bytes)
    loaded = config_mod.load(config)
    res = import_cache(loaded, original, progress=False, today=dt.date(2019, 2, 5))
    assert res.imported == 0
    assert sorted(r.path.name for r in res.refused if "is not final" in r.why) == [
        "EUR-USD_20190205.json",
        "EUR-USD_20190206.json",
        "EUR-USD_20190207.json",
    ]
    raw.path("EUR-USD", "BID", dt.date(2019, 2, 5)).unlink()
    res = import_cache(loaded, original, link=False, progress=False)
    assert (res.copied, res.linked, res.bars) == (1, 0, len(json.loads(good)["times"]))
    copy = raw.path("EUR-USD", "BID", dt.date(2019, 2, 5))
    assert copy.read_bytes() == good
    assert os.stat(copy).st_ino != os.stat(feb / "EUR-USD_20190205.json").st_ino


def test_symbols_file_in_the_original_format(tmp_path: Path) -> None:
    (tmp_path / "symbols.txt").write_text("symbol\nEUR/USD\nDEU.IDX/EUR\n\nXAU/USD # metal\n")
    (tmp_path / "c.toml").write_text('[pipeline]\nsymbols_file = "symbols.txt"\n')
    cfg = config_mod.load(tmp_path / "c.toml")
    assert cfg.pipeline.symbols == ["EUR-USD", "DEU.IDX-EUR", "XAU-USD"]
    (tmp_path / "d.toml").write_text(
        '[pipeline]\nsymbols = ["BTC-USD", "EUR-USD"]\nsymbols_file = "symbols.txt"\n'
    )
    both = config_mod.load(tmp_path / "d.toml").pipeline.symbols
    assert both == ["BTC-USD", "EUR-USD", "DEU.IDX-EUR", "XAU-USD"]
    (tmp_path / "symbols.txt").write_text("symbol\nEUR/USD\nEUR USD\n")
    with pytest.raises(ConfigError) as e:
        config_mod.load(tmp_path / "c.toml")
    assert "pipeline.symbols_file" in str(e.value) and "symbols.txt:3" in str(e.value)
    (tmp_path / "symbols.txt").unlink()
    with pytest.raises(ConfigError, match="cannot read it"):
        config_mod.load(tmp_path / "c.toml")


def test_the_shipped_universe_has_42_instruments() -> None:
    from tests.support.ops import REPO

    cfg = config_mod.load(REPO / "config" / "universe.toml")
    assert len(cfg.pipeline.symbols) == 42 and cfg.pipeline.sides == ["BID", "ASK"]
    kinds = {s.split("-")[0].split(".")[-1] for s in cfg.pipeline.symbols if "." in s}
    assert kinds == {"IDX", "CMD"}
    assert {"BTC-USD", "ETH-USD", "XAU-USD", "XAG-USD"} <= set(cfg.pipeline.symbols)
    assert set(cfg.resampler.sessions) <= set(cfg.pipeline.symbols)
