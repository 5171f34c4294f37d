"""The commit coordinator: a service's stores plus its checkpoint, committed as one unit.

``StoreSet.open`` reopens every store the checkpoint names at its committed length and
generation (torn tails dropped, interrupted rewrites undone: docs/FORMAT.md §5) and removes
store files created after the last commit. ``commit()`` is the only way records become
durable; its steps and their order are docs/FORMAT.md §4 (written there once), implemented
in ``commit`` in that order. Listeners (``on_commit``, e.g. the feed server) run after the
new lengths are published, never before the checkpoint is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from barstream.shared import checkpoint as ckpt
from barstream.shared import names, undo
from barstream.shared.errors import CommitFailed, StoreError, StoreFileMissing, StoreMismatch
from barstream.shared.fsio import make_dirs
from barstream.shared.header import StoreMeta
from barstream.shared.store import Store

log = logging.getLogger("barstream.store")


@dataclass
class StoreSet:
    """A service's stores plus its checkpoint: the unit of commit (see the module docstring;
    the commit order is docs/FORMAT.md §4)."""

    root: Path
    service: str
    stores: dict[str, Store] = field(default_factory=dict)
    upstream: dict[str, ckpt.UpstreamMark] = field(default_factory=dict)
    state: dict[str, object] = field(default_factory=dict)
    commits: int = 0
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    _dirty: set[str] = field(default_factory=set)
    _committed_upstream: dict[str, ckpt.UpstreamMark] = field(default_factory=dict)
    #: The committed service state, encoded (``ckpt.encode_state``): comparing encodings is
    #: far cheaper than keeping a deep copy of a large state.
    _committed_state: bytes = b"{}"
    #: Keys of the stores the last commit flushed or whose mark changed (gauges, listeners).
    changed: set[str] = field(default_factory=set)
    #: Why a commit failed: every later commit raises ``CommitFailed`` (never retried).
    failed: BaseException | None = None

    @classmethod
    def open(cls, root: str | Path, service: str) -> StoreSet:
        """Open (or create) the service's directory; reopen every store its checkpoint
        names at the committed length; files the checkpoint does not know were created
        after the last commit and are removed."""
        root = Path(root)
        make_dirs(root)
        self = cls(root=root, service=service)
        point = ckpt.Checkpoint(root / "checkpoint.json").load()
        known: set[Path] = set()
        if point is not None:
            if point.service != service:
                raise StoreMismatch(str(root), f"checkpoint belongs to service {point.service!r}")
            self.commits = point.commits
            self.upstream = dict(point.upstream)
            self.state = dict(point.state)
            self._committed_upstream = dict(self.upstream)
            self._committed_state = ckpt.encode_state(self.state)
            for key, mark in point.stores.items():
                path = self.path_for(key)
                try:
                    store = Store.open(
                        path,
                        committed_length=mark.length,
                        generation=mark.generation,
                        rewinds=[(g, o) for g, o in mark.rewinds],
                    )
                except StoreFileMissing:
                    raise StoreFileMissing(
                        str(path),
                        f"no such store file, but {root / 'checkpoint.json'} commits records "
                        f"[0, {mark.length}) of {key} to it",
                        offset=0,
                    ) from None
                if store.store_id.hex() != mark.store_id:
                    store.close()
                    raise StoreMismatch(
                        str(path),
                        f"store id {store.store_id.hex()} != checkpoint's {mark.store_id}",
                    )
                self.stores[key] = store
                known.add(path)
        for path in root.rglob("*.bars"):
            if path not in known:
                log.warning("%s: removing %s, created after the last commit", service, path)
                path.unlink()
        for path in root.rglob(f"*.bars{undo.SUFFIX}"):
            if path.with_suffix("") not in known:
                path.unlink()
        return self

    def path_for(self, key: str) -> Path:
        """``root/SYMBOL/SIDE/TF.bars``; a key that is no store key (a part with ``/``,
        ``..``, NUL …: shared/names.py) raises StoreError and never leaves ``root``."""
        why = names.key_problem(key)
        if why is not None:
            raise StoreError(str(self.root), f"store key {key[:80]!r}: {why}")
        symbol, side, tf = key.split("/")
        return self.root / symbol / side / f"{tf}.bars"

    def get(self, key: str) -> Store | None:
        return self.stores.get(key)

    def create(self, meta: StoreMeta) -> Store:
        if meta.key in self.stores:
            raise StoreError(str(self.path_for(meta.key)), "store exists already")
        path = self.path_for(meta.key)
        if path.exists():  # left by a crash before any commit named it
            path.unlink()
        undo.undo_path(path).unlink(missing_ok=True)
        store = Store.create(path, meta)
        self.stores[meta.key] = store
        self._dirty.add(meta.key)
        return store

    def ensure(self, meta: StoreMeta) -> Store:
        return self.stores.get(meta.key) or self.create(meta)

    def touch(self, key: str) -> None:
        """Note that a store was written (the next commit will flush it)."""
        self._dirty.add(key)

    def keys(self) -> Iterable[str]:
        return self.stores.keys()

    def __iter__(self) -> Iterator[Store]:
        return iter(self.stores.values())

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def commit(self) -> int:
        """Make everything written so far durable, in the order of docs/FORMAT.md §4.
        Returns the commit number. An error (an fsync error, a full disk) propagates, and
        every later commit of this StoreSet raises ``CommitFailed``: a failed flush may have
        lost written pages that a second fsync would report as durable (DESIGN §6)."""
        if self.failed is not None:
            raise CommitFailed(str(self.root / "checkpoint.json"), self.failed)
        try:
            return self._commit()
        except BaseException as e:
            self.failed = e
            raise

    def _commit(self) -> int:
        # 1. flush data: fdatasync every store written since the last commit.
        marks: dict[str, ckpt.StoreMark] = {}
        changed: set[str] = set()
        for key, store in self.stores.items():
            if (
                key in self._dirty
                or store.length != store.committed_length
                or store.stable_length < store.committed_length
            ):
                store.flush()
                changed.add(key)
            marks[key] = store.committed()
        self.commits += 1
        point = ckpt.CheckpointState(
            service=self.service,
            commits=self.commits,
            wall_ms=int(time.time() * 1000),
            stores=marks,
            upstream=dict(self.upstream),
            state=dict(self.state),
        )
        # 2. checkpoint: atomic replacement (tmp → fsync → rename → fsync dir).
        ckpt.Checkpoint(self.root / "checkpoint.json").save(point)
        # 3. publish: forget undo files, new lengths into the headers; then the listeners.
        for key, store in self.stores.items():
            store.mark_committed(marks[key])
        self._dirty.clear()
        self.changed = changed
        self._committed_upstream = dict(self.upstream)
        self._committed_state = ckpt.encode_state(self.state)
        for listener in self._listeners:
            listener()
        return self.commits

    def pending(self) -> int:
        """Records written since the last commit (0 when clean); upstream positions or
        service state that moved without a record changing count as 1, so they get
        committed too (a restart then resumes after them)."""
        moved = int(
            self.upstream != self._committed_upstream
            or ckpt.encode_state(self.state) != self._committed_state
        )
        return (
            sum(
                abs(s.length - s.committed_length) + (s.committed_length - s.stable_length)
                for s in self.stores.values()
            )
            + len(self._dirty)
            + moved
        )

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()
