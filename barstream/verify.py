"""``barstream verify``: check every store under a data directory, read-only.

Per service directory (one with a ``checkpoint.json``) and per store file (``*.bars``):

- the header decodes (magic, version, sizes, CRC, kind);
- the checkpoint's committed length fits in the file, its store id matches the header's,
  and the header never publishes more records than the checkpoint commits;
- bar stores: ``ts_ms`` strictly increasing (the transformer's ``days`` store: within each
  day version), every price finite and > 0, ``low <= open, close <= high``, volume finite
  and >= 0;
- bar stores: ``ts_ms`` on the minute, only known flag bits, the reserved byte zero;
- feature stores (kind FEATURES, docs/FORMAT.md §11: each bar record, then its G feature
  records): whole bars of ``1 + G`` records (G from the set when it is known, else from the
  first bar: its records share its ``ts_ms``), the bar records as bar stores' above, every
  feature record the group its offset says, with its bar's ``ts_ms`` and flags and one
  ``set_crc`` throughout (the set's, when known), no ``valid`` bit of a slot past the set's
  columns; the values themselves are recomputed (``barstream.recompute``, with --config);
- journal stores (``fetch``): day-aligned ``ts_ms``, a known record kind, ``body_len >= 0``
  (0 for a gap), the version rule of ``journal.py`` (1 + the day's previous version; 1 for a
  live record), known flags matching the kind, an unset tail (``src_offset`` -1, count and
  session 0), an HTTP status and a fetch time in range, and each record's check byte (a
  CRC-8 of the record, ``journal.seal``).

Record bodies that break none of these are found by recomputation (``barstream.recompute``:
every store is a pure function of its upstream; docs/FORMAT.md §12).

Each fault names the file, the record offset and what is wrong. Pure checks on arrays
(``check_bars``, ``check_journal``) are separate from the file walk (``verify_dir``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from barstream.shared.checkpoint import Checkpoint, StoreMark
from barstream.shared.errors import CheckpointCorrupt, StoreCorrupt
from barstream.shared.header import HEADER_SIZE, decode_header
from barstream.shared.record import (
    DTYPES,
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    FLAG_SKIPPED,
    JOURNAL_DAY,
    JOURNAL_EMPTY,
    JOURNAL_GAP,
    JOURNAL_LIVE,
    KIND_BARS,
    KIND_FEATURES,
    KIND_JOURNAL,
    RECORD_SIZE,
)
from barstream.shared.timeframe import DAY_MS, MINUTE_MS

if TYPE_CHECKING:
    from barstream.services.features.layout import Schema

#: Faults reported per check per store (the count says how many more).
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Fault:
    path: str
    offset: int | None
    what: str

    def __str__(self) -> str:
        where = f"{self.path}: record {self.offset}" if self.offset is not None else self.path
        return f"{where}: {self.what}"


@dataclass
class StoreReport:
    path: str
    key: str
    records: int
    faults: list[Fault]


def _report(path: str, bad: np.ndarray, describe: Callable[[int], str], more: str) -> list[Fault]:
    """Faults for the first offsets where ``bad`` is set, then one for the rest (``more``
    formatted with ``n``, their number)."""
    idx = np.flatnonzero(bad)
    out = [Fault(path, int(i), describe(int(i))) for i in idx[:MAX_EXAMPLES]]
    if len(idx) > MAX_EXAMPLES:
        out.append(Fault(path, None, more.format(n=len(idx) - MAX_EXAMPLES)))
    return out


def _same(path: str, name: str, bad: np.ndarray, describe: str) -> list[Fault]:
    """``_report`` with one description for every record."""
    return _report(path, bad, lambda _: describe, name + ": {n} more records like these")


def check_bars(records: np.ndarray, path: str, *, per_version: bool = False) -> list[Fault]:
    """Time order and OHLC invariants of bar records (``per_version``: time order only
    within runs of equal ``src_offset`` — the transformer's day versions)."""
    if not len(records):
        return []
    ts = records["ts_ms"]
    o, h, lo, c, v = (records[k] for k in ("open", "high", "low", "close", "volume"))
    step = np.diff(ts) <= 0
    if per_version:
        step &= np.diff(records["src_offset"]) == 0

    def prices(i: int) -> str:
        return f"open={o[i]!r} high={h[i]!r} low={lo[i]!r} close={c[i]!r}"

    stacked = np.stack([o, h, lo, c])
    bad_price = ~(np.isfinite(stacked) & (stacked > 0)).all(axis=0)
    with np.errstate(invalid="ignore"):
        bad_ohlc = ~bad_price & ~((lo <= np.minimum(o, c)) & (np.maximum(o, c) <= h) & (lo <= h))
        bad_vol = ~(np.isfinite(v) & (v >= 0))
    return [
        *_report(
            path,
            np.concatenate([[False], step]),
            lambda i: f"ts_ms {int(ts[i])} is not after the previous record's {int(ts[i - 1])}",
            "time order: {n} more",
        ),
        *_report(
            path,
            bad_price,
            lambda i: f"prices must be finite and > 0: {prices(i)}",
            "prices: {n} more",
        ),
        *_report(
            path,
            bad_ohlc,
            lambda i: f"OHLC invariant low <= open,close <= high broken: {prices(i)}",
            "OHLC: {n} more",
        ),
        *_same(path, "volume", bad_vol, "volume is negative or not finite"),
        *_same(path, "ts_ms", ts % MINUTE_MS != 0, "ts_ms is not on a minute"),
        *_report(
            path,
            (records["flags"] | BAR_FLAGS) != BAR_FLAGS,
            lambda i: f"unknown flag bits {int(records['flags'][i]):#06x}",
            "flags: {n} more",
        ),
        *_same(path, "reserved", records["reserved"] != 0, "reserved byte 63 is not 0"),
    ]


def check_features(records: np.ndarray, path: str, fs: Schema | None = None) -> list[Fault]:
    """The structure of a feature store's records (bar records' dtype, docs/FORMAT.md §11):
    each bar record then its G feature records. ``fs``: the set it was written for (from
    the configuration), else G is read off the first bar (the records sharing its
    ``ts_ms``) and the ``set_crc`` off its first feature record; values are not checked
    here (recomputation compares them)."""
    from barstream.services.features.layout import FEATURE_DTYPE
    from barstream.services.features.spec import GROUP_VALUES

    n = len(records)
    if not n:
        return []
    ts = records["ts_ms"]
    if fs is not None:
        g1 = 1 + fs.n_groups
    else:
        differs = np.flatnonzero(ts != ts[0])
        g1 = int(differs[0]) if len(differs) else n
        if g1 < 2:
            what = (
                f"ts_ms {int(ts[1])} is not its bar's {int(ts[0])}: in a feature store "
                "a bar's feature records follow it with its ts_ms"
            )
            return [Fault(path, 1, what)]
    if n % g1:
        how = "its set's" if fs is not None else "its first bar's"
        return [
            Fault(
                path,
                n - n % g1,
                f"{n} records are not whole bars of {g1} records ({how} bar + "
                f"{g1 - 1} feature records): the last bar is cut short",
            )
        ]
    grid = records.reshape(n // g1, g1)
    faults = check_bars(np.ascontiguousarray(grid[:, 0]), path)
    # bar-record offsets as the store's: bar k is record k * g1
    faults = [
        Fault(f.path, f.offset * g1 if f.offset is not None else None, f.what) for f in faults
    ]
    feats = np.ascontiguousarray(grid[:, 1:]).view(FEATURE_DTYPE).reshape(n // g1, g1 - 1)
    crc = int(fs.crc) if fs is not None else int(feats["set_crc"][0, 0])
    offsets = np.arange(n).reshape(n // g1, g1)[:, 1:]
    at = offsets.ravel()

    def mask(bad: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        out[at[bad.ravel()]] = True
        return out

    group = feats["group"]
    want_group = np.arange(g1 - 1)[None, :]
    cols = len(fs.columns) if fs is not None else (g1 - 1) * GROUP_VALUES
    slots = np.clip(cols - want_group * GROUP_VALUES, 0, GROUP_VALUES)  # used slots per group
    unused = (feats["valid"].astype(np.int64) >> slots) != 0
    whose = "the set's" if fs is not None else "the store's first"
    flat = feats.ravel()
    faults += [
        *_report(
            path,
            mask(group != want_group),
            lambda i: (
                f"feature record is group {int(records[i]['reserved'])}, its offset says "
                f"{i % g1 - 1}"
            ),
            "group: {n} more",
        ),
        *_same(
            path,
            "ts_ms",
            mask(feats["ts_ms"] != grid["ts_ms"][:, :1]),
            "a feature record's ts_ms is not its bar's",
        ),
        *_same(
            path,
            "flags",
            mask(feats["flags"] != grid["flags"][:, :1]),
            "a feature record's flags are not its bar's",
        ),
        *_report(
            path,
            mask(feats["set_crc"] != crc),
            lambda i: (
                f"set_crc {int(flat['set_crc'][_nth(i, g1)]):#010x} is not {whose} {crc:#010x}"
            ),
            "set_crc: {n} more",
        ),
        *_same(path, "valid", mask(unused), "valid bits set for slots past the set's columns"),
    ]
    return faults


def _nth(offset: int, g1: int) -> int:
    """The index among the feature records of the store's record ``offset``."""
    return offset // g1 * (g1 - 1) + offset % g1 - 1


def check_journal(records: np.ndarray, path: str) -> list[Fault]:
    faults: list[Fault] = []
    kinds = (JOURNAL_DAY, JOURNAL_LIVE, JOURNAL_GAP, JOURNAL_EMPTY)
    kind = records["kind"]
    flags = records["flags"]
    fetched = records["fetched_ms"]
    faults += _same(path, "day", records["ts_ms"] % DAY_MS != 0, "ts_ms is not a UTC midnight")
    faults += _same(path, "kind", ~np.isin(kind, kinds), "unknown journal kind")
    faults += _same(path, "body_len", records["body_len"] < 0, "negative body_len")
    faults += _same(
        path, "gap", (kind == JOURNAL_GAP) & (records["body_len"] != 0), "a gap with a body_len"
    )
    faults += _same(
        path,
        "gap digest",
        (kind == JOURNAL_GAP) & ((flags & FLAG_SKIPPED) == 0) & (records["digest"] != 0),
        "a gap not skipped by the user has a digest",
    )
    live = FLAG_LIVE | FLAG_PROVISIONAL
    faults += _same(
        path,
        "flags",
        ((flags | JOURNAL_FLAGS) != JOURNAL_FLAGS)
        | ((kind == JOURNAL_LIVE) != ((flags & live) == live))
        | ((kind != JOURNAL_GAP) & ((flags & FLAG_SKIPPED) != 0)),
        "flags do not match the record's kind",
    )
    tail = (records["src_offset"] != -1) | (records["src_count"] != 0) | (records["session"] != 0)
    faults += _same(path, "tail", tail, "src_offset/src_count/session not -1/0/0")
    from barstream.services.downloader.journal import first_unsealed

    bad = first_unsealed(records)
    if bad is not None:
        faults.append(
            Fault(path, bad, "check byte 63 is not the CRC-8 of bytes 0-62: the record was damaged")
        )
    status = records["http_status"]
    faults += _same(path, "http_status", (status < 0) | (status > 599), "http_status out of range")
    faults += _same(
        path,
        "fetched_ms",
        (fetched != 0) & ((fetched < FETCHED_MIN_MS) | (fetched > FETCHED_MAX_MS)),
        "fetched_ms is not a plausible wall-clock time",
    )
    faults += _report(
        path, _bad_versions(records), lambda i: "version breaks the journal's rule", "{n} more"
    )
    return faults


#: Flag bits a bar record may carry; a journal record.
BAR_FLAGS = FLAG_PROVISIONAL | FLAG_REVISED | FLAG_LIVE | FLAG_DAY_END
JOURNAL_FLAGS = BAR_FLAGS | FLAG_SKIPPED
#: A journal's fetch times lie between 2000 and 2200 (UTC ms).
FETCHED_MIN_MS = 946_684_800_000
FETCHED_MAX_MS = 7_258_118_400_000


def _bad_versions(records: np.ndarray) -> np.ndarray:
    """``version`` of each record against journal.py's rule: 1 for a live record, else 1 +
    the version of the day's previous record (1 for its first)."""
    bad = np.zeros(len(records), dtype=bool)
    last: dict[int, int] = {}
    for i, (day, kind, version) in enumerate(
        zip(
            records["ts_ms"].tolist(),
            records["kind"].tolist(),
            records["version"].tolist(),
            strict=True,
        )
    ):
        want = 1 if kind == JOURNAL_LIVE else last.get(day, 0) + 1
        bad[i] = version != want
        last[day] = version
    return bad


def verify_store(
    path: Path, mark: StoreMark | None, feature_sets: Mapping[str, Schema] | None = None
) -> StoreReport:
    """Every check of one store file (read-only; never opens it for writing).
    ``feature_sets``: feature store key → its set (``features.service.feature_keys`` of the
    configuration), so a feature store is checked against the set it was written for;
    without it (or for a key it lacks) only the store's own structure is checked."""
    p = str(path)
    with path.open("rb") as f:
        head = f.read(HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
    try:
        header = decode_header(head, p)
    except StoreCorrupt as e:
        return StoreReport(p, "?", 0, [Fault(p, None, f"header: {e}")])
    faults: list[Fault] = []
    available = (size - HEADER_SIZE) // RECORD_SIZE
    committed = header.length
    if mark is not None:
        committed = mark.length
        if mark.store_id != header.store_id.hex():
            faults.append(
                Fault(p, None, f"store id {header.store_id.hex()} != checkpoint's {mark.store_id}")
            )
        if header.length > mark.length:
            faults.append(
                Fault(
                    p,
                    mark.length,
                    f"header publishes {header.length} records, the checkpoint commits only "
                    f"{mark.length}",
                )
            )
    if committed > available:
        faults.append(
            Fault(
                p,
                available,
                f"committed length {committed} but the file holds only {available} whole records",
            )
        )
        committed = available
    dtype = DTYPES[header.meta.kind]
    records = (
        np.fromfile(path, dtype=dtype, count=committed, offset=HEADER_SIZE)
        if committed
        else np.zeros(0, dtype)
    )
    if header.meta.kind == KIND_BARS:
        faults += check_bars(records, p, per_version=header.meta.timeframe == "days")
    elif header.meta.kind == KIND_JOURNAL:
        faults += check_journal(records, p)
    elif header.meta.kind == KIND_FEATURES:
        fs = (feature_sets or {}).get(header.meta.key)
        faults += check_features(records, p, fs)
    return StoreReport(p, header.meta.key, committed, faults)


def service_dirs(data_dir: Path) -> Iterator[Path]:
    """Directories holding a service's stores: those with a checkpoint, and stray ones."""
    seen: set[Path] = set()
    for ck in sorted(data_dir.rglob("checkpoint.json")):
        seen.add(ck.parent)
        yield ck.parent
    for bars in sorted(data_dir.rglob("*.bars")):
        if not any(parent in seen for parent in bars.parents):
            seen.add(bars.parent)
            yield bars.parent


def plan(data_dir: Path) -> list[tuple[Path, StoreMark | None, list[Fault]]]:
    """(store file, its checkpoint mark, faults found before reading it) for every store."""
    out: list[tuple[Path, StoreMark | None, list[Fault]]] = []
    for root in service_dirs(data_dir):
        ck_path = root / "checkpoint.json"
        marks: dict[Path, StoreMark] = {}
        pre: list[Fault] = []
        if ck_path.exists():
            try:
                point = Checkpoint(ck_path).load()
            except CheckpointCorrupt as e:
                pre.append(Fault(str(ck_path), None, str(e)))
                point = None
            if point is not None:
                for key, mark in point.stores.items():
                    symbol, side, tf = key.split("/")
                    store_path = root / symbol / side / f"{tf}.bars"
                    marks[store_path] = mark
                    if not store_path.exists():
                        pre.append(
                            Fault(str(store_path), None, f"checkpoint names {key}, file missing")
                        )
        files = sorted(root.rglob("*.bars")) if ck_path.exists() else sorted(root.glob("*.bars"))
        for i, f in enumerate(files):
            out.append((f, marks.get(f), pre if i == 0 else []))
        if not files and pre:
            out.append((ck_path, None, pre))
    return out
