"""The 64-byte feature record: a feature store holds G records per bar (docs/FORMAT.md
"Feature stores").

Layout (little-endian, no padding)::

    offset size field    type  meaning
         0    8 ts_ms    <i8   the bar's ts_ms (bar open time, ms since the epoch, UTC)
         8   48 v0..v5   <f8   six column values of the group (NaN where not valid or unused)
        56    4 set_crc  <u4   crc32 of the feature set's definition (FeatureSet.crc)
        60    2 flags    <u2   the bar's flags (FLAG_PROVISIONAL, FLAG_REVISED, ...)
        62    1 valid    u1    bit j set = v<j> is valid (bits of unused slots are 0)
        63    1 group    u1    which group of the bar's columns, 0 .. G-1

``ts_ms`` and ``flags`` sit where a bar record (shared/record.py) has them, so code that reads
only those two (a history by time, closed-only streaming, the seqlock) treats both alike.

Bar k of the upstream store is records ``k*G .. k*G + G - 1`` of the feature store: the offset
mapping is arithmetic, so no source offset is stored. Group g holds columns ``6g .. 6g + 5`` of
``FeatureSet.columns`` (outputs and hidden state, in indicator order); ``set_crc`` lets a reader
check that the store was written for the set it reads it with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from numba import njit

from barstream.services.features.engine import Features
from barstream.services.features.spec import GROUP_VALUES, FeatureSet
from barstream.shared.errors import BarstreamError
from barstream.shared.inbound import bars_problem
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE

FEATURE_DTYPE: Final = np.dtype(
    [("ts_ms", "<i8")]
    + [(f"v{j}", "<f8") for j in range(GROUP_VALUES)]
    + [("set_crc", "<u4"), ("flags", "<u2"), ("valid", "u1"), ("group", "u1")]
)
assert FEATURE_DTYPE.itemsize == RECORD_SIZE
assert FEATURE_DTYPE.fields is not None
assert [FEATURE_DTYPE.fields[n][1] for n in ("v0", "v5", "set_crc", "flags", "valid", "group")] == [
    8,
    48,
    56,
    60,
    62,
    63,
]
assert RECORD_DTYPE.fields is not None
assert all(FEATURE_DTYPE.fields[n][1] == RECORD_DTYPE.fields[n][1] for n in ("ts_ms", "flags"))
_BITS: Final = (1 << np.arange(GROUP_VALUES, dtype=np.uint8)).astype(np.uint8)


class FeatureLayoutError(BarstreamError):
    """Feature records that do not fit the feature set they are read with."""


class Schema(Protocol):
    """What reading feature records needs of a set (a ``FeatureSet``, or a ``Described``
    from a gateway listing)."""

    @property
    def name(self) -> str: ...
    @property
    def columns(self) -> tuple[str, ...]: ...
    @property
    def n_groups(self) -> int: ...
    @property
    def crc(self) -> int: ...


@dataclass(frozen=True)
class Described:
    """A set as described to a reader that does not have the configuration (a consumer):
    name, columns, groups and crc (``gateway_protocol.FeatureInfo``)."""

    name: str
    columns: tuple[str, ...]
    outputs: tuple[str, ...]
    n_groups: int
    crc: int


@njit(cache=True)
def _pack(values, ok, ts, flags, crc, g, wi, wf, wu):  # type: ignore[no-untyped-def]
    """One pass: bar i, group k → record i*g + k as words (ts, v0..v5, tail)."""
    cols = values.shape[0]
    for i in range(values.shape[1]):
        fl = np.uint64(flags[i]) << np.uint64(32)
        for k in range(g):
            r = i * g + k
            wi[r, 0] = ts[i]
            bits = np.uint64(0)
            for j in range(6):
                col = k * 6 + j
                if col < cols:
                    wf[r, 1 + j] = values[col, i]
                    if ok[col, i]:
                        bits |= np.uint64(1) << np.uint64(j)
                else:
                    wf[r, 1 + j] = np.nan
            wu[r, 7] = crc | fl | (bits << np.uint64(48)) | (np.uint64(k) << np.uint64(56))


def pack(fs: FeatureSet, feats: Features, out: np.ndarray | None = None) -> np.ndarray:
    """Features of m bars → m * G records (bar-major: all groups of bar 0, then bar 1...),
    in one compiled pass over 64-bit words (word 0 ts_ms, 1-6 the values, 7 the
    little-endian ``set_crc | flags << 32 | valid << 48 | group << 56``). ``out`` (feature
    records, at least m * G) is written instead of a new array (a reused buffer)."""
    if feats.columns != fs.columns:
        raise FeatureLayoutError(f"features of columns {feats.columns[:3]}... are not set {fs.name!r}'s")  # fmt: skip
    m, g = len(feats), fs.n_groups
    if out is None:
        out = np.empty(m * g, FEATURE_DTYPE)
    elif out.dtype != FEATURE_DTYPE or len(out) < m * g:
        raise FeatureLayoutError(f"pack needs {m * g} feature records to write, not {len(out)}")
    out = out[: m * g]
    wf = out.view(np.float64).reshape(m * g, 8)
    _pack(
        np.ascontiguousarray(feats.values),
        np.ascontiguousarray(feats.ok),
        np.ascontiguousarray(feats.ts_ms, np.int64),
        np.ascontiguousarray(feats.flags, np.uint16),
        np.uint64(fs.crc),
        g,
        wf.view(np.int64),
        wf,
        wf.view(np.uint64),
    )
    return out


def unpack(fs: Schema, records: np.ndarray, *, first_bar: int = 0) -> Features:
    """Records (a whole number of bars, from bar ``first_bar``) → Features; checks the
    groups and the set's crc, naming the first bad record."""
    g = fs.n_groups
    if records.dtype != FEATURE_DTYPE:
        raise FeatureLayoutError(f"records of dtype {records.dtype} are not feature records")
    if len(records) % g:
        raise FeatureLayoutError(
            f"{len(records)} records are not whole bars of set {fs.name!r} ({g} records per bar)"
        )
    m = len(records) // g
    rec = records.reshape(m, g)
    bad = np.flatnonzero(
        (rec["set_crc"] != fs.crc).ravel() | (rec["group"] != np.arange(g)[None, :]).ravel()
    )
    if len(bad):
        k = int(bad[0])
        r = records[k]
        raise FeatureLayoutError(
            f"feature record of bar {first_bar + k // g} (group {int(r['group'])}, "
            f"set_crc {int(r['set_crc']):#010x}) was not written for set {fs.name!r} "
            f"(crc {fs.crc:#010x}, {g} groups): rebuild the feature store"
        )
    cols = len(fs.columns)
    vals = np.stack([rec[f"v{j}"] for j in range(GROUP_VALUES)], axis=1)  # (m, g... ) see below
    vals = vals.transpose(2, 1, 0).reshape(g * GROUP_VALUES, m)[:cols]
    bits = (rec["valid"][:, :, None] & _BITS[None, None, :]) != 0  # (m, g, 6)
    ok = bits.transpose(1, 2, 0).reshape(g * GROUP_VALUES, m)[:cols].astype(np.uint8)
    return Features(
        fs.columns,
        np.ascontiguousarray(rec["ts_ms"][:, 0]),
        np.ascontiguousarray(rec["flags"][:, 0]),
        np.ascontiguousarray(vals),
        np.ascontiguousarray(ok),
    )


def row(fs: FeatureSet, records: np.ndarray, bar: int) -> np.ndarray:
    """The stored column values of ``bar`` (for ``engine.state_at``), from a whole store's
    records (``records[bar*G : (bar+1)*G]`` are read)."""
    g = fs.n_groups
    return unpack(fs, records[bar * g : (bar + 1) * g], first_bar=bar).values[:, 0].copy()


# -- feature stores: each bar record followed by its G feature records ----------------------


def stride(fs: Schema) -> int:
    """Records per bar in a feature store: the bar, then its ``G`` feature records."""
    return 1 + fs.n_groups


def bars_of(records: np.ndarray, fs: Schema) -> np.ndarray:
    """The bar records of a feature store's ``records`` (a strided view, no copy)."""
    g1 = stride(fs)
    if len(records) % g1:
        raise FeatureLayoutError(
            f"a feature store of set {fs.name!r} holds whole bars of {g1} records; "
            f"{len(records)} records are not: rebuild the feature store"
        )
    return records.view(RECORD_DTYPE)[::g1]


def values_of(records: np.ndarray, fs: Schema, bar: int) -> np.ndarray:
    """The stored column values of ``bar`` in a feature store's ``records`` (for
    ``engine.state_at``)."""
    g1 = stride(fs)
    recs = records[bar * g1 + 1 : (bar + 1) * g1].view(FEATURE_DTYPE)
    return unpack(fs, recs, first_bar=bar).values[:, 0].copy()


def interleave(fs: FeatureSet, bars: np.ndarray, feats: Features, out: np.ndarray) -> np.ndarray:
    """Write ``bars`` and their features into ``out`` (``len(bars) * stride`` records, bar
    records' dtype): bar 0, its G feature records, bar 1, …"""
    m, g = len(bars), fs.n_groups
    if len(feats) != m or len(out) != m * (g + 1):
        raise FeatureLayoutError(f"interleave: {m} bars, {len(feats)} feature rows, {len(out)} records")  # fmt: skip
    grid = out.reshape(m, g + 1)
    grid[:, 0] = bars
    grid[:, 1:] = pack(fs, feats).view(RECORD_DTYPE).reshape(m, g)
    return out


def split(fs: Schema, records: np.ndarray, *, first_bar: int = 0) -> tuple[np.ndarray, Features]:
    """A feature store's records (whole bars, from bar ``first_bar``) → (bars, Features)."""
    g1 = stride(fs)
    bars = np.ascontiguousarray(bars_of(records, fs))
    grid = np.ascontiguousarray(records.view(RECORD_DTYPE)).reshape(len(bars), g1)
    feats = np.ascontiguousarray(grid[:, 1:]).reshape(-1).view(FEATURE_DTYPE)
    return bars, unpack(fs, feats, first_bar=first_bar)


def store_records(fs: FeatureSet, bars: np.ndarray, feats: Features) -> np.ndarray:
    """The records a feature store of ``bars`` holds (the batch definition a service's store
    is tested against): ``interleave`` into a new array."""
    return interleave(fs, bars, feats, np.empty(len(bars) * stride(fs), RECORD_DTYPE))


def feature_records_problem(
    fs: FeatureSet, existing: np.ndarray, start: int, records: np.ndarray
) -> str | None:
    """Why ``records`` cannot be a feature store's from offset ``start`` on (``existing``:
    what the store holds, bar records' dtype), or None: every bar record keeps the bar
    invariants (``shared.inbound.bars_problem``), every feature record is the group its
    offset says, written for ``fs`` (its crc), for the ``ts_ms`` of its bar."""
    g1 = stride(fs)
    if start > len(existing):
        return f"starts at record {start}, past the store's end {len(existing)}"
    recs = records.view(RECORD_DTYPE)
    offsets = start + np.arange(len(recs))
    pos = offsets % g1
    is_bar = pos == 0
    before = existing[((start - 1) // g1) * g1 :][:1] if start > 0 else existing[:0]
    why = bars_problem(before, recs[is_bar])
    if why is not None:
        return f"bar records: {why}"
    owner = offsets - pos
    ts = np.where(
        owner >= start,
        recs["ts_ms"][np.maximum(owner - start, 0)],
        existing["ts_ms"][np.minimum(owner, max(len(existing) - 1, 0))] if len(existing) else 0,
    )
    feats = np.ascontiguousarray(recs).view(FEATURE_DTYPE)
    bad = np.flatnonzero(
        ~is_bar
        & ((feats["group"] != pos - 1) | (feats["set_crc"] != fs.crc) | (feats["ts_ms"] != ts))
    )
    if len(bad):
        i = int(bad[0])
        return (
            f"record {start + i} (group {int(pos[i]) - 1} of the bar at record {int(owner[i])}) "
            f"is group {int(feats['group'][i])}, set_crc {int(feats['set_crc'][i]):#010x}, "
            f"ts_ms {int(feats['ts_ms'][i])}: not a record of set {fs.name!r} "
            f"(crc {fs.crc:#010x}) for that bar"
        )
    return None
