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


def _padded(fs: FeatureSet, a: np.ndarray, fill: float | int) -> np.ndarray:
    width = fs.n_groups * GROUP_VALUES
    out = np.full((width, a.shape[1]), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


def pack(fs: FeatureSet, feats: Features) -> np.ndarray:
    """Features of m bars → m * G records (bar-major: all groups of bar 0, then bar 1...)."""
    if feats.columns != fs.columns:
        raise FeatureLayoutError(f"features of columns {feats.columns[:3]}... are not set {fs.name!r}'s")  # fmt: skip
    m, g = len(feats), fs.n_groups
    vals = _padded(fs, feats.values, np.nan).reshape(g, GROUP_VALUES, m)
    oks = _padded(fs, feats.ok, 0).reshape(g, GROUP_VALUES, m)
    rec = np.zeros((m, g), FEATURE_DTYPE)
    for j in range(GROUP_VALUES):
        rec[f"v{j}"] = vals[:, j, :].T
    rec["valid"] = np.bitwise_or.reduce(oks * _BITS[None, :, None], axis=1).T
    rec["group"] = np.arange(g, dtype=np.uint8)[None, :]
    rec["ts_ms"] = feats.ts_ms[:, None]
    rec["flags"] = feats.flags[:, None]
    rec["set_crc"] = fs.crc
    return rec.reshape(m * g)


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
