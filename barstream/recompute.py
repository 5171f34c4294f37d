"""``barstream verify``'s recomputation: every store is a pure function of its upstream store
(DESIGN §2), so a record body damaged on disk — a flipped bit in a price, a volume, a
``src_offset`` — that breaks no invariant is still found: each store is recomputed from the
upstream it was built from and compared byte for byte (docs/FORMAT.md §12).

- downloader journal → raw cache: every ``DAY`` record's body is in the raw cache with its
  digest and length (``RawCache.body``), a ``LIVE`` one's in the live directory;
- transformer ``days`` ← journal + raw cache: each day version (records sharing a
  ``src_offset``) equals ``decode_candles`` of the body its journal record names;
- aggregator ``1m`` ← transformer ``days`` [0, consumed): ``aggregate.merge`` from empty;
- resampler ``1m`` replica ← aggregator ``1m``, gateway replicas ← resampler stores: equal;
- resampler timeframes ← its ``1m`` replica: one ``Cascade.update`` from empty;
- features ``SYM/SIDE/TF.SET`` ← the resampler's ``SYM/SIDE/TF``: ``layout.store_records`` of
  ``engine.compute`` of the set (from the configuration: without one, or for a set it no
  longer has, the store is checked for structure only, by verify), gateway replicas of
  feature stores ← the features stage's stores: equal.

"Consumed" is the downstream checkpoint's upstream mark: compared only while the upstream
still has that store id and generation (else it moved on since: ``skipped``), and only when
the downstream's checkpoint did not change during the read (a running pipeline is fine).
Each difference is a ``Fault`` naming the file, the first differing record and field.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from barstream.shared.alignment import PRESETS
from barstream.shared.checkpoint import Checkpoint, CheckpointState
from barstream.shared.config import Config, SessionConfig
from barstream.shared.errors import BarstreamError, PayloadInvalid, UpstreamInvalid
from barstream.shared.record import JOURNAL_DAY, JOURNAL_LIVE, RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.timeframe import Timeframe
from barstream.verify import MAX_EXAMPLES, Fault

if TYPE_CHECKING:
    from barstream.services.features.spec import FeatureSet

_EMPTY = np.empty(0, RECORD_DTYPE)
#: Retries when a downstream checkpoint changed while it was being compared.
RETRIES = 3


@dataclass
class Recomputed:
    """What ``recompute`` found: faults, stores compared, and stores skipped (with why)."""

    faults: list[Fault] = field(default_factory=list)
    compared: int = 0
    skipped: list[str] = field(default_factory=list)


def store_path(root: Path, service: str, key: str) -> Path:
    symbol, side, tf = key.split("/")
    return root / service / symbol / side / f"{tf}.bars"


def first_difference(
    path: Path,
    stored: np.ndarray,
    expected: np.ndarray,
    what: str,
    ending: str = "the record was damaged on disk",
) -> Fault | None:
    """The first record where ``stored`` differs from ``expected`` (same dtype), naming the
    field and both values; a length difference is a fault at the shorter end."""
    n = min(len(stored), len(expected))
    a = stored[:n].view(np.uint8).reshape(n, -1)
    b = expected[:n].view(np.uint8).reshape(n, -1)
    rows = np.flatnonzero((a != b).any(axis=1))
    if len(rows):
        i = int(rows[0])
        byte = int(np.flatnonzero(a[i] != b[i])[0])
        name = _field_at(stored.dtype, byte)
        return Fault(
            str(path),
            i,
            f"{name} (record byte {byte}) is {stored[i][name].item()!r}, recomputed from "
            f"{what} {expected[i][name].item()!r}: {ending}",
        )
    if len(stored) != len(expected):
        return Fault(
            str(path),
            n,
            f"holds {len(stored)} committed records, recomputed from {what}: {len(expected)}",
        )
    return None


def _field_at(dtype: np.dtype[np.void], byte: int) -> str:
    assert dtype.fields is not None
    for name, (sub, offset, *_) in dtype.fields.items():
        if offset <= byte < offset + sub.itemsize:
            return str(name)
    return "?"


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[Store]:
    store = Store.open(path, writable=False)
    try:
        yield store
    finally:
        store.close()


def _committed(root: Path, service: str, key: str, point: CheckpointState) -> np.ndarray | None:
    """The committed records of a service's store as its checkpoint ``point`` has them, or
    None when the file no longer reads so (rewritten or grown since: a newer commit)."""
    mark = point.stores.get(key)
    if mark is None:
        return None
    with _reader(store_path(root, service, key)) as s:
        if s.store_id.hex() != mark.store_id or s.generation != mark.generation:
            return None
        out = s.snapshot(0, mark.length)
    return out if len(out) == mark.length else None


def _upstream(root: Path, service: str, key: str, point: CheckpointState) -> np.ndarray | None:
    """The upstream records [0, consumed) the downstream checkpoint ``point`` says it
    consumed of ``service``'s store ``key``; None when that store moved on since."""
    mark = point.upstream.get(key)
    path = store_path(root, service, key)
    if mark is None or not path.exists():
        return None
    with _reader(path) as s:
        if s.store_id.hex() != mark.store_id or s.generation != mark.generation:
            return None
        out = s.snapshot(0, mark.offset)
    return out if len(out) == mark.offset else None


Check = Callable[[CheckpointState], tuple[list[Fault], int, list[str]]]


def _stable(root: Path, service: str, check: Check, out: Recomputed) -> None:
    """Run ``check`` against the service's checkpoint; again if a commit landed meanwhile."""
    ck = Checkpoint(root / service / "checkpoint.json")
    for _ in range(RETRIES):
        try:
            before = ck.load()
        except BarstreamError:
            return  # verify reports the checkpoint itself
        if before is None:
            return
        faults, compared, skipped = check(before)
        after = ck.load()
        if after is not None and after.commits == before.commits:
            out.faults += faults
            out.compared += compared
            out.skipped += skipped
            return
    out.skipped.append(f"{service}: kept committing while it was compared; run verify again")


Sessions = Mapping[str, Sequence[SessionConfig]]


def recompute(
    root: Path, sessions: Sessions | None = None, *, config: Config | None = None
) -> Recomputed:
    """Every comparison of the module docstring under data directory ``root``.
    ``sessions``: the resampler's configured sessions per symbol (None: not known, so a
    symbol's timeframes are compared only when the header says no sessions were used).
    ``config``: the pipeline's configuration (its sessions when ``sessions`` is None, and
    the ``[[features]]`` sets the feature stores are recomputed with; None: feature stores
    are not recomputed, each listed as checked for structure only)."""
    if sessions is None and config is not None:
        sessions = config.resampler.sessions
    out = Recomputed()
    _stable(root, "downloader", lambda p: _journal(root, p), out)
    _stable(root, "transformer", lambda p: _transformer(root, p), out)
    _stable(root, "aggregator", lambda p: _aggregator(root, p), out)
    _stable(root, "resampler", lambda p: _resampler(root, p, sessions), out)
    _stable(root, "features", lambda p: _features(root, p, config, sessions), out)
    _stable(root, "gateway", lambda p: _gateway(root, p), out)
    return out


def is_feature_key(key: str) -> bool:
    """``SYM/SIDE/TF.SET`` (a feature store's key), not a bar store's ``SYM/SIDE/TF``."""
    return "." in key.rsplit("/", 1)[-1]


def _gateway(root: Path, point: CheckpointState) -> tuple[list[Fault], int, list[str]]:
    """The gateway's replicas: of the resampler's bar stores and of the features stage's
    stores (one checkpoint holds the upstream marks of both)."""
    bars = [k for k in point.stores if not is_feature_key(k)]
    feats = [k for k in point.stores if is_feature_key(k)]
    f1, c1, s1 = _replicas(root, "gateway", "resampler", point, bars)
    f2, c2, s2 = _replicas(root, "gateway", "features", point, feats) if feats else ([], 0, [])
    return f1 + f2, c1 + c2, s1 + s2


def _features(
    root: Path, point: CheckpointState, config: Config | None, sessions: Sessions | None
) -> tuple[list[Fault], int, list[str]]:
    """Each feature store against its set's batch computation over the resampler's bars
    the features stage consumed (its checkpoint's upstream mark of ``SYM/SIDE/TF``)."""
    from barstream.services.features import layout
    from barstream.services.features.engine import compute
    from barstream.services.features.service import feature_keys
    from barstream.shared.sessions import sessions_of

    faults: list[Fault] = []
    skipped: list[str] = []
    compared = 0
    sets = feature_keys(config) if config is not None else {}
    for key in point.stores:
        path = store_path(root, "features", key)
        if config is None:
            skipped.append(
                f"features {key}: checked for structure only (no configuration: "
                "verify --config FILE recomputes it with its [[features]] set)"
            )
            continue
        fs = sets.get(key)
        if fs is None:
            skipped.append(
                f"features {key}: checked for structure only (the configuration has no "
                f"[[features]] set {key.rsplit('.', 1)[-1]!r} on this timeframe)"
            )
            continue
        symbol, side, tf_set = key.split("/")
        bar_key = f"{symbol}/{side}/{tf_set.rsplit('.', 1)[0]}"
        stored = _committed(root, "features", key, point)
        bars = _upstream(root, "resampler", bar_key, point)
        if stored is None or bars is None:
            skipped.append(f"features {key}: its store or its upstream moved on")
            continue
        compared += 1
        symbol_sessions = sessions_of(sessions.get(symbol, [])) if sessions else []
        try:
            expected = layout.store_records(
                fs, bars, compute(fs, bars, list(symbol_sessions) or None)
            )
        except (ValueError, TypeError, BarstreamError) as e:
            where = store_path(root, "resampler", bar_key)
            faults.append(Fault(str(where), None, f"cannot compute set {fs.name!r} on it: {e}"))
            continue
        fault = _feature_difference(
            path,
            stored,
            expected,
            fs,
            f"set {fs.name!r} over {store_path(root, 'resampler', bar_key)}",
        )
        if fault is not None:
            faults.append(fault)
    return faults, compared, skipped


def _feature_difference(
    path: Path, stored: np.ndarray, expected: np.ndarray, fs: FeatureSet, what: str
) -> Fault | None:
    """``first_difference`` of two feature stores' records, a feature record's field named
    as the feature layout has it (its column, for a value)."""
    from barstream.services.features.layout import FEATURE_DTYPE
    from barstream.services.features.spec import GROUP_VALUES

    fault = first_difference(path, stored, expected, what)
    if fault is None or fault.offset is None or fault.offset >= min(len(stored), len(expected)):
        return fault
    i = fault.offset
    g1 = 1 + fs.n_groups
    bar, pos = divmod(i, g1)
    if pos == 0:
        return Fault(fault.path, i, f"bar {bar}'s record: {fault.what}")
    a, b = stored[i : i + 1].view(FEATURE_DTYPE), expected[i : i + 1].view(FEATURE_DTYPE)
    inner = first_difference(path, a, b, what)
    assert inner is not None
    name = inner.what.split(" ", 1)[0]
    column = ""
    if name.startswith("v") and name[1:].isdigit():
        col = (pos - 1) * GROUP_VALUES + int(name[1:])
        column = f" (column {fs.columns[col]!r})" if col < len(fs.columns) else " (unused slot)"
    return Fault(fault.path, i, f"bar {bar}'s feature record {pos - 1}{column}: {inner.what}")


def _transformer(root: Path, point: CheckpointState) -> tuple[list[Fault], int, list[str]]:
    from barstream.services.downloader.raw_cache import RawCache
    from barstream.services.transformer.transform import decode_candles

    faults: list[Fault] = []
    skipped: list[str] = []
    compared = 0
    cache = RawCache(root / "raw", today=lambda: dt.date.max, live=None)
    for key in point.stores:
        symbol, side, _ = key.split("/")
        days = _committed(root, "transformer", key, point)
        journal = _upstream(root, "downloader", f"{symbol}/{side}/fetch", point)
        if days is None or journal is None:
            skipped.append(f"transformer {key}: its store or its journal moved on")
            continue
        path = store_path(root, "transformer", key)
        compared += 1
        src = days["src_offset"]
        cuts = np.flatnonzero(np.diff(src)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(days)], strict=True):
            if lo == hi:
                continue
            offset = int(src[lo])
            if not 0 <= offset < len(journal):
                faults.append(Fault(str(path), lo, f"src_offset {offset} is no journal record"))
                break
            rec = journal[offset]
            kind = int(rec["kind"])
            day = _day(int(rec["ts_ms"]))
            if day is None:
                faults.append(Fault(str(path), lo, f"journal record {offset}: ts_ms is no date"))
                break
            body = None
            if kind == JOURNAL_DAY:
                body = cache.body(symbol, side, day, int(rec["digest"]), live=False)
            elif kind == JOURNAL_LIVE:
                live = (
                    root / "downloader" / "live" / f"{symbol}-{side}-{int(rec['digest']):016x}.json"
                )
                with contextlib.suppress(FileNotFoundError):
                    body = live.read_bytes()
            if body is None:
                faults.append(
                    Fault(str(path), lo, f"journal record {offset} ({day}) has no body to decode")
                )
                break
            try:
                expected = decode_candles(
                    body,
                    symbol=symbol,
                    side=side,
                    day_ms=int(rec["ts_ms"]),
                    live=kind == JOURNAL_LIVE,
                    src_offset=offset,
                )
            except PayloadInvalid as e:
                faults.append(Fault(str(path), lo, f"stored a version that does not decode: {e}"))
                break
            fault = first_difference(path, days[lo:hi], expected, f"journal record {offset}")
            if fault is not None:
                faults.append(Fault(fault.path, lo + (fault.offset or 0), fault.what))
                break
    return faults, compared, skipped


def _journal(root: Path, point: CheckpointState) -> tuple[list[Fault], int, list[str]]:
    """Every final day a journal names has its body in the raw cache (digest and length)."""
    from barstream.services.downloader.raw_cache import RawCache

    if not (root / "raw").is_dir():
        return [], 0, ["downloader: no raw cache beside it"]
    cache = RawCache(root / "raw", today=lambda: dt.date.max, live=None)
    faults: list[Fault] = []
    skipped: list[str] = []
    compared = 0
    for key in point.stores:
        symbol, side, _ = key.split("/")
        journal = _committed(root, "downloader", key, point)
        if journal is None:
            skipped.append(f"downloader {key}: moved on")
            continue
        compared += 1
        path = store_path(root, "downloader", key)
        days = np.flatnonzero((journal["kind"] == JOURNAL_DAY) & (journal["body_len"] > 0))
        bad = 0
        for i in days.tolist():
            rec = journal[i]
            day = _day(int(rec["ts_ms"]))
            if day is None:
                faults.append(Fault(str(path), i, "ts_ms is no date"))
                continue
            body = cache.body(symbol, side, day, int(rec["digest"]), live=False)
            if body is not None and len(body) == int(rec["body_len"]):
                continue
            bad += 1
            if bad > MAX_EXAMPLES:
                continue
            what = (
                f"body_len {int(rec['body_len'])} but the cached body has {len(body)} bytes"
                if body is not None
                else f"no body with digest {int(rec['digest']):016x} in the raw cache "
                f"({cache.path(symbol, side, day)} is missing or damaged, or the record is): "
                f"re-fetch it with `barstream backfill --start {day} --end {day} "
                f"--symbols {symbol} --sides {side} --refetch`"
            )
            faults.append(Fault(str(path), i, f"day {day}: {what}"))
        if bad > MAX_EXAMPLES:
            faults.append(Fault(str(path), None, f"raw bodies: {bad - MAX_EXAMPLES} more"))
    return faults, compared, skipped


def _aggregator(root: Path, point: CheckpointState) -> tuple[list[Fault], int, list[str]]:
    from barstream.services.aggregator.aggregate import merge

    faults: list[Fault] = []
    skipped: list[str] = []
    compared = 0
    for key in point.stores:
        symbol, side, _ = key.split("/")
        stored = _committed(root, "aggregator", key, point)
        days = _upstream(root, "transformer", f"{symbol}/{side}/days", point)
        if stored is None or days is None:
            skipped.append(f"aggregator {key}: its store or its upstream moved on")
            continue
        compared += 1
        try:
            _, expected = merge(np.empty(0, RECORD_DTYPE), days, 0)
        except (UpstreamInvalid, ValueError) as e:
            at = e.offset if isinstance(e, UpstreamInvalid) else None
            where = store_path(root, "transformer", f"{symbol}/{side}/days")
            faults.append(Fault(str(where), at, f"cannot merge it again: {e}"))
            continue
        fault = first_difference(
            store_path(root, "aggregator", key), stored, expected, "the transformer's days"
        )
        if fault is not None:
            faults.append(fault)
    return faults, compared, skipped


def _replicas(
    root: Path, service: str, upstream: str, point: CheckpointState, keys: list[str] | None = None
) -> tuple[list[Fault], int, list[str]]:
    faults: list[Fault] = []
    skipped: list[str] = []
    compared = 0
    for key in point.stores if keys is None else keys:
        stored = _committed(root, service, key, point)
        expected = _upstream(root, upstream, key, point)
        if stored is None or expected is None:
            skipped.append(f"{service} {key}: its store or its upstream moved on")
            continue
        compared += 1
        fault = first_difference(
            store_path(root, service, key),
            stored,
            expected,
            f"the {upstream}'s copy {store_path(root, upstream, key)}",
            "one of the two copies was damaged on disk",
        )
        if fault is not None:
            faults.append(fault)
    return faults, compared, skipped


def _resampler(
    root: Path, point: CheckpointState, sessions: Sessions | None
) -> tuple[list[Fault], int, list[str]]:
    from barstream.services.resampler.cascade import Cascade
    from barstream.shared.sessions import sessions_of

    m1_keys = [k for k in point.stores if k.endswith("/1m")]
    faults, compared, skipped = _replicas(root, "resampler", "aggregator", point, m1_keys)
    for m1_key in m1_keys:
        symbol, side, _ = m1_key.split("/")
        m1 = _committed(root, "resampler", m1_key, point)
        prefix = f"{symbol}/{side}/"
        tf_keys = [k for k in point.stores if k.startswith(prefix) and k != m1_key]
        if m1 is None or not tf_keys:
            continue
        with _reader(store_path(root, "resampler", tf_keys[0])) as s:
            alignment = PRESETS.get(s.meta.alignment)
        if alignment is None or (sessions is None and _uses_sessions(root, tf_keys)):
            skipped.append(f"resampler {prefix}*: alignment or sessions unknown")
            continue
        symbol_sessions = sessions_of(sessions.get(symbol, [])) if sessions else []
        stored = {Timeframe.parse(k.split("/")[2]): k for k in tf_keys}
        try:
            cascade = Cascade(
                list(stored),
                alignment,
                symbol_sessions or None,
                m1=_EMPTY.copy,
                bars=lambda _tf: _EMPTY,
            )
            result = cascade.update(0, m1)
        except (ValueError, BarstreamError) as e:
            faults.append(
                Fault(str(store_path(root, "resampler", m1_key)), None, f"cannot resample: {e}")
            )
            continue
        for tf, key in stored.items():
            records = _committed(root, "resampler", key, point)
            if records is None or tf not in result:
                skipped.append(f"resampler {key}: moved on, or no timeframe of the cascade")
                continue
            compared += 1
            fault = first_difference(
                store_path(root, "resampler", key), records, result[tf][1], "its 1m replica"
            )
            if fault is not None:
                faults.append(fault)
    return faults, compared, skipped


def _day(ts_ms: int) -> dt.date | None:
    try:
        return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date()
    except (ValueError, OverflowError, OSError):
        return None


def _uses_sessions(root: Path, tf_keys: list[str]) -> bool:
    """Session ids in any bar: sessions were configured (verify without --config skips)."""
    for key in tf_keys:
        with _reader(store_path(root, "resampler", key)) as s:
            if s.length and bool((s.view(0, s.length)["session"] != 0).any()):
                return True
    return False
