"""MT4 labels of calendar bars (issue 16): a 1M bar is labelled by the 1st of its month at
00:00 server time even when its first trading day is later (June 2019 opens on a Saturday,
September and December 2019 on a Sunday), a 1Y bar by 1 January, and a 1W bar by its Monday
(the default, as the original project) or the Sunday before (MetaTrader's W1).

The oracle is computed by hand, minute by minute with zoneinfo and plain Python, from the same
1m bars the resampler cascades: the bars of each server-time month / week, their first open,
highest high, lowest low, last close and volume sum."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from barstream import cli, export
from barstream.services.resampler.resample import resample_all
from barstream.shared.alignment import MT4
from barstream.shared.header import StoreMeta
from barstream.shared.storeset import StoreSet
from barstream.shared.timeframe import MINUTE_MS
from tests.support.minutes import records_at

NEW_YORK = ZoneInfo("America/New_York")


def fx_minutes(first: dt.date, last: dt.date) -> np.ndarray:
    """UTC ms of every FX minute (Sunday 17:00 to Friday 17:00 New York) between two dates."""
    out: list[int] = []
    day = first
    while day <= last:
        # minute by minute in New York wall time would skip DST hours: walk UTC instead
        start = dt.datetime.combine(day, dt.time(0), dt.UTC)
        t0 = int(start.timestamp() * 1000)
        for k in range(1440):
            t = t0 + k * MINUTE_MS
            ny = dt.datetime.fromtimestamp(t / 1000, NEW_YORK)
            wd, h = ny.weekday(), ny.hour
            trading = wd in (0, 1, 2, 3) or (wd == 4 and h < 17) or (wd == 6 and h >= 17)
            if trading:
                out.append(t)
        day += dt.timedelta(days=1)
    return np.array(out, dtype=np.int64)


def server_time(t_ms: int) -> dt.datetime:
    """MT4 server time (New York + 7 h) of a UTC ms, as a naive datetime."""
    ny = dt.datetime.fromtimestamp(t_ms / 1000, NEW_YORK)
    return ny.replace(tzinfo=None) + dt.timedelta(hours=7)


def hand_bars(m1: np.ndarray, key_of: Callable[[dt.datetime], str]) -> dict[str, tuple[float, ...]]:
    """{label: (open, high, low, close, volume)} grouping minutes by ``key_of(server time)``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(m1["ts_ms"].tolist()):
        groups[key_of(server_time(t))].append(i)
    out: dict[str, tuple[float, ...]] = {}
    for label, idx in groups.items():
        rows = m1[idx]
        out[label] = (
            float(rows["open"][0]),
            float(rows["high"].max()),
            float(rows["low"].min()),
            float(rows["close"][-1]),
            round(float(rows["volume"].sum()), 6),
        )
    return out


def parse_lines(lines: list[str]) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for line in lines:
        d, t, o, h, lo, c, v = line.rstrip("\n").split(",")
        out[f"{d},{t}"] = (float(o), float(h), float(lo), float(c), float(v))
    return out


@pytest.fixture(scope="module")
def bars() -> dict[str, np.ndarray]:
    m1 = records_at(
        np.random.default_rng(16), fx_minutes(dt.date(2019, 5, 20), dt.date(2020, 1, 10))
    )
    built = resample_all(m1, ["1W", "1M", "1Y"], MT4)
    return {"1m": m1} | {str(tf): b for tf, b in built.items() if str(tf) in ("1W", "1M", "1Y")}


def test_months_starting_on_a_weekend_are_labelled_the_first(
    bars: dict[str, np.ndarray],
) -> None:
    lines = list(export.mt4_lines(bars["1M"], "1M"))
    got = parse_lines(lines)
    want = hand_bars(bars["1m"], lambda s: s.strftime("%Y.%m.01,00:00"))
    # every month's label is the 1st at 00:00, the three weekend starts included
    assert list(got) == sorted(want)
    for label in ("2019.06.01,00:00", "2019.09.01,00:00", "2019.12.01,00:00"):
        assert label in got, label
    # whole months (June … December) equal the hand-computed bars; May and January are cut
    for label in [f"2019.{m:02d}.01,00:00" for m in range(6, 13)]:
        assert got[label] == want[label], label
    # the bar itself still opens with the month's first trading minute (Monday 3 June 2019
    # 00:00 server time = Sunday 2 June 21:00 UTC): only the label differs
    june = bars["1M"][1]
    assert server_time(int(june["ts_ms"])) == dt.datetime(2019, 6, 3, 0, 0)
    dates, times = export.mt4_labels(bars["1M"]["ts_ms"][1:2])  # no timeframe: the open
    assert (dates[0], times[0]) == ("2019.06.03", "00:00")


def test_weeks_labelled_monday_or_sunday(bars: dict[str, np.ndarray]) -> None:
    def monday(s: dt.datetime) -> str:
        return (s.date() - dt.timedelta(days=s.weekday())).strftime("%Y.%m.%d,00:00")

    def sunday(s: dt.datetime) -> str:
        d = s.date() - dt.timedelta(days=s.weekday() + 1)
        return d.strftime("%Y.%m.%d,00:00")

    by_monday = parse_lines(list(export.mt4_lines(bars["1W"], "1W")))
    by_sunday = parse_lines(list(export.mt4_lines(bars["1W"], "1W", "sunday")))
    want_monday = hand_bars(bars["1m"], monday)
    want_sunday = hand_bars(bars["1m"], sunday)
    assert by_monday == want_monday
    assert by_sunday == want_sunday
    assert "2019.06.03,00:00" in by_monday and "2019.06.02,00:00" in by_sunday
    for label in by_monday:
        day = dt.datetime.strptime(label, "%Y.%m.%d,%H:%M")
        assert day.weekday() == 0, label
    for label in by_sunday:
        assert dt.datetime.strptime(label, "%Y.%m.%d,%H:%M").weekday() == 6, label


def test_year_bar_labelled_first_of_january(bars: dict[str, np.ndarray]) -> None:
    got = parse_lines(list(export.mt4_lines(bars["1Y"], "1Y")))
    assert list(got) == ["2019.01.01,00:00", "2020.01.01,00:00"]
    # 2020 opens on Wednesday 1 January: server 00:00 of the 1st is the bar's own open
    assert server_time(int(bars["1Y"]["ts_ms"][1])) == dt.datetime(2020, 1, 1, 0, 0)


def test_export_command_writes_the_calendar_labels(
    tmp_path: Path, bars: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    ss = StoreSet.open(root / "resampler", "resampler")
    for tf in ("1W", "1M"):
        ss.ensure(StoreMeta("EUR-USD", "BID", tf, "mt4")).append(bars[tf])
        ss.touch(f"EUR-USD/BID/{tf}")
    ss.commit()
    ss.close()
    base = ["export", "EUR-USD", "--data-dir", str(root), "--format", "mt4", "--provisional"]
    assert cli.main([*base[:2], "1M", *base[2:]]) == 0
    months = capsys.readouterr().out.splitlines()
    assert [m[:16] for m in months] == list(parse_lines([m + "\n" for m in months]))
    assert "2019.09.01,00:00" in [m[:16] for m in months]
    assert cli.main([*base[:2], "1W", *base[2:], "--week-label", "sunday"]) == 0
    weeks = [w[:10] for w in capsys.readouterr().out.splitlines()]
    assert all(dt.datetime.strptime(w, "%Y.%m.%d").weekday() == 6 for w in weeks), weeks
    assert len(weeks) == len(bars["1W"])
