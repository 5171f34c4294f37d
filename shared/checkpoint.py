"""Crash-safe checkpoints: the named offsets a service has made durable.

One checkpoint file per service directory holds, atomically together:

- every store's committed length, generation and rewind log (``StoreMark``);
- every upstream stream's consumed position (``UpstreamMark``: store id, offset, generation);
- small service state (e.g. the downloader's gaps), as plain JSON values.

``save`` replaces the file atomically (``fsio.atomic_write``), so a reader — and the
service after a crash — sees the old checkpoint or the new one, never a mix. Where a save
sits in a commit (after the data flush, before the headers are published) is the crash
rule of docs/FORMAT.md §4, written there once (``StoreSet.commit`` follows it); the file's
fields are FORMAT.md §3. ``load`` raises ``CheckpointCorrupt`` naming the file.

The file carries its own ``crc32`` (of its encoding with ``crc32`` null): a flipped digit
of a length or an offset still parses as JSON, and would otherwise silently move where the
service resumes. A file without the field (edited by hand) is read unchecked; unknown
fields are refused, so a damaged key name cannot hide the checksum.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Final

import msgspec

from barstream.shared.errors import CheckpointCorrupt
from barstream.shared.fsio import atomic_write

CHECKPOINT_VERSION: Final = 1


class StoreMark(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    store_id: str  # hex of the store's 16-byte id
    length: int  # committed records
    generation: int  # bumped by every commit that rewrote committed records
    rewinds: list[tuple[int, int]] = []  # (generation, lowest offset rewritten in it)


class UpstreamMark(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    store_id: str  # hex id of the upstream store this offset belongs to
    offset: int  # upstream records consumed: [0, offset)
    generation: int  # upstream generation those records belong to


class CheckpointState(msgspec.Struct, forbid_unknown_fields=True):
    service: str
    commits: int
    wall_ms: int
    stores: dict[str, StoreMark] = {}
    upstream: dict[str, UpstreamMark] = {}
    state: dict[str, Any] = {}
    version: int = CHECKPOINT_VERSION
    #: zlib.crc32 of this state's encoding with ``crc32`` None; set by ``save``, checked
    #: and cleared by ``load`` (None in a file: not checked).
    crc32: int | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CheckpointState)
_state_encoder = msgspec.json.Encoder(order="deterministic")


def encode_state(state: dict[str, Any]) -> bytes:
    """Service state as canonical JSON (sorted keys): equal states encode equal, so a
    saved encoding tells whether the state moved since (no deep copy kept)."""
    return _state_encoder.encode(state)


class Checkpoint:
    """The checkpoint file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> CheckpointState | None:
        """The last saved state, or None when there is none yet. Raises CheckpointCorrupt."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = _decoder.decode(raw)
        except (msgspec.DecodeError, ValueError) as e:  # ValueError: invalid UTF-8 in a str
            why = str(e)
            if "byte" not in why and "`$" not in why:  # say where, as msgspec does elsewhere
                why += f" (at byte {len(raw)}, the end of the file)"
            raise CheckpointCorrupt(str(self.path), f"cannot parse checkpoint: {why}") from None
        if state.crc32 is not None:
            crc, state.crc32 = state.crc32, None
            if _crc(state) != crc:
                raise CheckpointCorrupt(
                    str(self.path),
                    f"checksum mismatch: bytes [0, {len(raw)}) do not match their crc32 "
                    f"{crc:#010x} (the file was damaged)",
                )
        if state.version != CHECKPOINT_VERSION:
            raise CheckpointCorrupt(
                str(self.path),
                f"checkpoint version {state.version}, this build reads {CHECKPOINT_VERSION}",
            )
        for key, mark in state.stores.items():
            if mark.length < 0 or mark.generation < 0:
                raise CheckpointCorrupt(
                    str(self.path), f"store {key}: negative length or generation"
                )
        for key, up in state.upstream.items():
            if up.offset < 0:
                raise CheckpointCorrupt(
                    str(self.path), f"upstream {key}: negative offset {up.offset}"
                )
        return state

    def save(self, state: CheckpointState) -> None:
        """Atomically and durably replace the checkpoint (``fsio.atomic_write``: tmp →
        fsync → rename → fsync(dir)), step 2 of docs/FORMAT.md §4."""
        sealed = msgspec.structs.replace(state, crc32=None)
        sealed.crc32 = _crc(sealed)
        atomic_write(self.path, _encoder.encode(sealed))


def _crc(state: CheckpointState) -> int:
    return zlib.crc32(_encoder.encode(state))
