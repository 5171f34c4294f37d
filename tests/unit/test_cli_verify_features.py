"""barstream verify of feature stores (docs/FORMAT.md §11): a store equal to the batch
computation over the resampler's bars passes; a damaged structure (a feature record's group,
set_crc, ts_ms, a cut bar) is found by verify's own checks, with or without the set; a
damaged value, which keeps the structure, by recomputation with the configuration — without
one the store is listed as checked for structure only, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from barstream import cli
from barstream.recompute import recompute
from barstream.services.features import layout
from barstream.services.features.engine import compute
from barstream.services.features.service import feature_keys
from barstream.services.features.spec import FeatureSet
from barstream.shared import config as config_mod
from barstream.shared.checkpoint import UpstreamMark
from barstream.shared.config import Config
from barstream.shared.header import HEADER_SIZE, StoreMeta
from barstream.shared.record import KIND_FEATURES, RECORD_SIZE
from barstream.shared.storeset import StoreSet
from barstream.verify import check_features, verify_store
from tests.unit.test_cli_verify import bars

BAR_KEY = "EUR-USD/BID/1m"
KEY = "EUR-USD/BID/1m.core"
N_BARS = 120


def make_config(root: Path) -> Config:
    return config_mod.from_dict(
        {
            "pipeline": {"data_dir": str(root), "symbols": ["EUR-USD"], "sides": ["BID"]},
            "features": [
                {
                    "name": "core",
                    "timeframes": ["1m"],
                    "indicators": [
                        {"kind": "sma", "params": {"period": 5}},
                        {"kind": "ema", "params": {"period": 5}},
                        {"kind": "rsi", "params": {"period": 14}},
                        {"kind": "macd", "params": {"fast": 3, "slow": 6, "signal": 2}},
                        {"kind": "bbands", "params": {"period": 10, "k": 2.0}},
                    ],
                }
            ],
        }
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A resampler 1m store and the features stage's store of set ``core`` over it, with
    the features checkpoint's upstream mark at the resampler store's end."""
    root = tmp_path / "data"
    cfg = make_config(root)
    fs = feature_keys(cfg)[KEY]
    assert fs.n_groups >= 2  # several feature records per bar
    b = bars(N_BARS)
    rs = StoreSet.open(root / "resampler", "resampler")
    up = rs.ensure(StoreMeta("EUR-USD", "BID", "1m", "utc"))
    up.append(b)
    rs.touch(BAR_KEY)
    rs.commit()
    mark = UpstreamMark(up.store_id.hex(), len(b), up.generation)
    rs.close()
    ft = StoreSet.open(root / "features", "features")
    ft.ensure(StoreMeta.from_key(KEY, alignment="utc", kind=KIND_FEATURES)).append(
        layout.store_records(fs, b, compute(fs, b))
    )
    ft.touch(KEY)
    ft.upstream[BAR_KEY] = mark
    ft.commit()
    ft.close()
    return root


def the_set(root: Path) -> FeatureSet:
    return feature_keys(make_config(root))[KEY]


def feature_file(root: Path) -> Path:
    return root / "features" / "EUR-USD" / "BID" / "1m.core.bars"


def poke(path: Path, record: int, byte: int, fmt: str, value: float | int) -> None:
    with path.open("r+b") as f:
        f.seek(HEADER_SIZE + record * RECORD_SIZE + byte)
        f.write(struct.pack(fmt, value))


def run_verify(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["verify", "--data-dir", str(root), "-q"])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_good_feature_store_passes(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fs = the_set(root)
    path = feature_file(root)
    report = verify_store(path, None)
    assert report.key == KEY and report.records == N_BARS * (1 + fs.n_groups)
    assert report.faults == []
    assert verify_store(path, None, {KEY: fs}).faults == []
    again = recompute(root, config=make_config(root))
    assert again.faults == [] and not any("features" in s for s in again.skipped)
    assert again.compared == 1  # the feature store (the resampler's replica has no upstream)
    code, out = run_verify(root, capsys)
    assert code == 0, out
    # the CLI without a configuration: structure only, said so
    assert f"not recomputed: features {KEY}: checked for structure only" in out


def test_tampered_value_fails_recompute(root: Path) -> None:
    fs = the_set(root)
    g1 = 1 + fs.n_groups
    bar = 50
    record = bar * g1 + 2  # the bar's second feature record (group 1)
    poke(feature_file(root), record, 8 + 3 * 8, "<d", 1.2345)  # its v3, still finite
    assert verify_store(feature_file(root), None, {KEY: fs}).faults == []  # structure holds
    again = recompute(root, config=make_config(root))
    assert len(again.faults) == 1, again.faults
    fault = again.faults[0]
    assert fault.offset == record
    assert f"bar {bar}'s feature record 1 (column {fs.columns[6 + 3]!r}): v3" in fault.what
    assert "1.2345" in fault.what
    # no configuration: not recomputed, said so; no crash
    blind = recompute(root)
    assert blind.faults == []
    assert any(s.startswith(f"features {KEY}: checked for structure only") for s in blind.skipped)


def test_tampered_bar_fails_recompute(root: Path) -> None:
    fs = the_set(root)
    g1 = 1 + fs.n_groups
    poke(feature_file(root), 7 * g1, 40, "<d", 11.0)  # bar 7's volume (10.0)
    assert verify_store(feature_file(root), None).faults == []
    (fault,) = recompute(root, config=make_config(root)).faults
    assert fault.offset == 7 * g1 and "bar 7's record: volume" in fault.what


def test_a_set_the_configuration_lacks_is_structure_only(root: Path) -> None:
    cfg = config_mod.from_dict({"pipeline": {"data_dir": str(root), "symbols": ["EUR-USD"]}})
    again = recompute(root, config=cfg)
    assert again.faults == []
    assert any("no [[features]] set 'core'" in s for s in again.skipped), again.skipped


@pytest.mark.parametrize(
    ("pos", "byte", "fmt", "value", "what"),
    [
        (2, 63, "<B", 0, "feature record is group 0, its offset says 1"),
        (1, 56, "<I", 0xDEADBEEF, "set_crc 0xdeadbeef is not"),
        (1, 0, "<q", 0, "a feature record's ts_ms is not its bar's"),
        (2, 60, "<H", 1, "a feature record's flags are not its bar's"),
    ],
)
def test_tampered_structure_fails_verify(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    pos: int,
    byte: int,
    fmt: str,
    value: int,
    what: str,
) -> None:
    fs = the_set(root)
    g1 = 1 + fs.n_groups
    record = 30 * g1 + pos
    path = feature_file(root)
    poke(path, record, byte, fmt, value)
    code, out = run_verify(root, capsys)
    assert code == 1
    assert f"FAULT {path}: record {record}: {what}" in out, out
    with_set = verify_store(path, None, {KEY: fs}).faults
    assert [f.offset for f in with_set] == [record] and what in with_set[0].what


def test_a_cut_bar_and_a_bad_bar_record() -> None:
    from tests.unit.test_cli_verify import bars as make_bars

    cfg = make_config(Path("/nonexistent"))
    fs = feature_keys(cfg)[KEY]
    g1 = 1 + fs.n_groups
    b = make_bars(10)
    recs = layout.store_records(fs, b, compute(fs, b))
    cut = check_features(recs[:-1], "f")
    assert len(cut) == 1 and cut[0].offset == 9 * g1 and "not whole bars" in cut[0].what
    bad = recs.copy()
    bad[4 * g1]["high"] = 0.5  # a bar record below its open/close
    faults = check_features(bad, "f")
    assert [f.offset for f in faults] == [4 * g1] and "OHLC" in faults[0].what
    assert check_features(recs[:0], "f") == []
    shifted = recs.copy()
    shifted["ts_ms"][1] += 60_000  # bar 0's first feature record: not its bar's time
    (first,) = check_features(shifted, "f")
    assert first.offset == 1 and "is not its bar's" in first.what
    assert recs.tobytes() == layout.store_records(fs, b, compute(fs, b)).tobytes()
