"""An in-memory store with the Store's replace-from semantics, for pure-core tests."""

from __future__ import annotations

import numpy as np

from barstream.shared.record import RECORD_DTYPE


class MemoryStore:
    """Records in a growable buffer; ``records`` is a zero-copy view of the committed part."""

    def __init__(self, records: np.ndarray | None = None) -> None:
        self._buf = np.zeros(1024, RECORD_DTYPE)
        self.length = 0
        if records is not None:
            self.replace_from(0, records)

    @property
    def records(self) -> np.ndarray:
        return self._buf[: self.length]

    def replace_from(self, start: int, records: np.ndarray) -> None:
        """From offset ``start`` on, the store now reads ``records``."""
        if not 0 <= start <= self.length:
            raise ValueError(f"replace from offset {start} beyond the end {self.length}")
        end = start + len(records)
        if end > len(self._buf):
            grown = np.zeros(max(end, 2 * len(self._buf)), RECORD_DTYPE)
            grown[:start] = self._buf[:start]
            self._buf = grown
        self._buf[start:end] = records
        self.length = end
