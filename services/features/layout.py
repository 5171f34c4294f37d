"""The 64-byte feature record: a feature store holds G records per bar (docs/FORMAT.md
"Feature stores").

Layout (little-endian, no padding)::

    offset size field    type  meaning
         0    8 ts_ms    <i8   the bar's ts_ms (bar open time, ms since the epoch, UTC)
         8   48 v0..v5   <f8   six column values of the group (NaN where not valid or unused)
        56    1 valid    u1    bit j set = v<j> is valid (bits of unused slots are 0)
        57    1 group    u1    which group of the bar's columns, 0 .. G-1
        58    2 flags    <u2   the bar's flags (FLAG_PROVISIONAL, FLAG_REVISED, ...)
        60    4 set_crc  <u4   crc32 of the feature set's definition (FeatureSet.crc)

Bar k of the upstream store is records ``k*G .. k*G + G - 1`` of the feature store: the offset
mapping is arithmetic, so no source offset is stored. Group g holds columns ``6g .. 6g + 5`` of
``FeatureSet.columns`` (outputs and hidden state, in indicator order); ``set_crc`` lets a reader
check that the store was written for the set it reads it with.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numba import njit

from barstream.services.features.engine import Features
from barstream.services.features.spec import GROUP_VALUES, FeatureSet
from barstream.shared.errors import BarstreamError
from barstream.shared.record import RECORD_SIZE

FEATURE_DTYPE: Final = np.dtype(
    [("ts_ms", "<i8")]
    + [(f"v{j}", "<f8") for j in range(GROUP_VALUES)]
    + [("valid", "u1"), ("group", "u1"), ("flags", "<u2"), ("set_crc", "<u4")]
)
assert FEATURE_DTYPE.itemsize == RECORD_SIZE
assert FEATURE_DTYPE.fields is not None
assert [FEATURE_DTYPE.fields[n][1] for n in ("v0", "v5", "valid", "group", "flags", "set_crc")] == [
    8,
    48,
    56,
    57,
    58,
    60,
]
_BITS: Final = (1 << np.arange(GROUP_VALUES, dtype=np.uint8)).astype(np.uint8)


class FeatureLayoutError(BarstreamError):
    """Feature records that do not fit the feature set they are read with."""


@njit(cache=True)
def _pack(values, ok, ts, flags, crc, g, wi, wf, wu):  # type: ignore[no-untyped-def]
    """One pass: bar i, group k → record i*g + k as words (ts, v0..v5, tail)."""
    cols = values.shape[0]
    for i in range(values.shape[1]):
        fl = np.uint64(flags[i]) << np.uint64(16)
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
            wu[r, 7] = bits | (np.uint64(k) << np.uint64(8)) | fl | crc


def pack(fs: FeatureSet, feats: Features, out: np.ndarray | None = None) -> np.ndarray:
    """Features of m bars → m * G records (bar-major: all groups of bar 0, then bar 1...),
    in one compiled pass over 64-bit words (word 0 ts_ms, 1-6 the values, 7 the
    little-endian ``valid | group << 8 | flags << 16 | set_crc << 32``). ``out`` (feature
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
        np.uint64(fs.crc) << np.uint64(32),
        g,
        wf.view(np.int64),
        wf,
        wf.view(np.uint64),
    )
    return out


def unpack(fs: FeatureSet, records: np.ndarray, *, first_bar: int = 0) -> Features:
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
