"""The Service base: a class with a short life.

``run()`` installs uvloop and SIGTERM/SIGINT handlers, awaits ``main()`` and always awaits
``close()``, which commits and closes sockets (linger 0; the feed server lingers
``STOP_DELIVER_S`` when every peer was sent the last commit, so those bytes still go
out). A service owns its StoreSet, its FeedServer (what it serves downstream) and usually
a FeedClient (its upstream). Drain mode (``--drain``): ``main()`` returns once the
upstream is exhausted and every downstream peer has what it needs — tests use it to run a
stage to completion without sleeps.

The stage contract: a stage's handler is a pure-ish function of one upstream batch that
*returns* its changes — ``[Change(store key, from offset X, records)]``, each saying "from
offset X on, this store now reads these records" — and ``Service.apply`` is the one place
that carries them out: the write (``replace_from`` or truncate + vectored append), rewind
counting, the records-written metric, marking the store for the next commit, and
``maybe_commit``. The handlers never write a store themselves.

Logs are one line per event, prefixed with the service name.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

import numpy as np
import zmq

from barstream.shared import config as config_mod
from barstream.shared import memory
from barstream.shared import protocol as p
from barstream.shared.config import Config
from barstream.shared.errors import (
    EXIT_ERROR,
    EXIT_NEEDS_OPERATOR,
    EXIT_OK,
    EXIT_USAGE,
    BarstreamError,
    BindError,
    ConfigError,
    DrainIncomplete,
    UpstreamInvalid,
    needs_operator,
    own_file_damage,
)
from barstream.shared.feed_client import FeedClient
from barstream.shared.feed_server import Attachments, Cut, FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.inbound import INPUT_ERRORS
from barstream.shared.metrics import Metrics, stream_labels
from barstream.shared.names import RejectedName, StreamNames, check_shape, printable
from barstream.shared.ratelog import RateLimitedLog
from barstream.shared.storeset import StoreSet

LOG_FORMAT = "%(asctime)s %(service)s %(levelname)s %(name)s: %(message)s"

#: On a clean stop, how long connected downstream peers may take to receive the last commit
#: (``FeedServer.deliver_pending``), and how long the feed socket then lingers.
STOP_DELIVER_S = 1.0

#: Least time between commits while the upstream is behind (see ``Service.maybe_commit``).
CATCHUP_COMMIT_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class Change:
    """ "From offset ``start`` on, store ``key`` now reads ``parts``" (their concatenation;
    nothing after it). ``diff``: rewrite only from the first record that differs from what
    the store holds (``Store.replace_from``) — for stages whose output often repeats itself
    (a re-sent batch, an unchanged bar); without it the store is truncated at ``start`` and
    ``parts`` appended in one vectored write, for stages that already know ``start`` is the
    first change (``merge``) or that only append."""

    key: str
    start: int
    parts: Sequence[np.ndarray]
    diff: bool = False


#: Drain mode: how long a downstream peer that left before it had everything may take to
#: come back (a slow peer that stays connected is waited for however long it takes).
DRAIN_RETURN_S: Final = 60.0
#: The kind of stream (the key's third part) each stage's upstream serves.
UPSTREAM_KINDS: Final = {"transformer": "fetch", "aggregator": "days", "resampler": "1m"}

#: What a stage's handler returns for one upstream batch: its changes, applied in order.
Changes = Sequence[Change]


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_ServiceFilter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())


class Service(abc.ABC):
    """Base of the services. Subclasses set ``name`` and implement ``main()``."""

    name: ClassVar[str]

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        self.config = config
        self.drain = drain
        self.log = logging.getLogger(f"barstream.{self.name}")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.metrics = Metrics(self.name)
        self.endpoints = config.endpoints(self.name)
        self.stores = StoreSet.open(config.data_dir(self.name), self.name)
        #: The upstream store keys this service takes (shared/names.py).
        self.upstream_names = self.take_names()
        #: Rejected upstream batches: all counted; logged first per stream, then summarised.
        self.rejectlog = RateLimitedLog(self.log, "rejected batches", level=logging.ERROR)
        self.server: FeedServer | None = None
        self.upstream: FeedClient | None = None
        self.stopping = asyncio.Event() if _has_loop() else None
        self._last_commit = time.monotonic()
        self._serve_metrics = serve_metrics
        self.metrics_port = 0
        #: Drain mode: the downstream followers of this run (``--drain-peers``), waited for
        #: even when they connect after the others are done (FeedServer.wait_drained).
        self.drain_peers: tuple[str, ...] = ()
        #: main() ended on an error: close() commits nothing (a batch may be half applied;
        #: the restart resumes from the last checkpoint, DESIGN §6).
        self.failed = False

    # -- lifecycle ----------------------------------------------------------------------

    @abc.abstractmethod
    async def main(self) -> None:
        """The service's work; returns on stop (or, in drain mode, when done)."""

    def serve_feed(
        self, attachments: Attachments | None = None, cut: Cut | None = None
    ) -> FeedServer:
        """Create this service's feed server (bound now; ``server.run()`` serves)."""
        self.server = FeedServer(
            self.ctx,
            self.endpoints.feed,
            self.stores,
            metrics=self.metrics,
            attachments=attachments,
            cut=cut,
            config_key=f"{self.name}.endpoints.feed",
        )
        return self.server

    def handle(self, batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> Changes:
        """The stage: "from offset ``batch.start`` on, the upstream store ``batch.stream``
        now reads ``records``" → this service's changes. Stages that follow a feed
        override it; ``Service.apply`` carries the changes out."""
        raise NotImplementedError(f"{type(self).__name__} follows no upstream feed")

    def forget(self, stream: str) -> None:
        """A batch of upstream ``stream`` raised inside ``handle``: drop any state the stage
        keeps in memory for it, so the next batch starts from the stores (the resampler's
        cascade). Nothing was written: ``handle`` only returns changes."""
        return None

    def take_names(self) -> StreamNames:
        """The upstream store keys this stage takes: the configured symbols and sides, and
        the kind its upstream serves (``UPSTREAM_KINDS``); a stage with another rule
        (the gateway) overrides it."""
        kind = UPSTREAM_KINDS.get(self.name)
        p_cfg = self.config.pipeline
        return StreamNames(p_cfg.symbols, p_cfg.sides, None if kind is None else (kind,))

    def follow_upstream(self) -> FeedClient:
        """The client of the upstream feed: each batch goes through ``handle`` and
        ``apply``; the end of each burst commits."""

        async def on_batch(batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> None:
            try:
                changes = self.handle(batch, records, attachments)
            except INPUT_ERRORS as e:
                # Records that break the stage's arithmetic (a ValueError of numpy, a key or
                # index they point past): the batch is rejected, not the service — a restart
                # would get the same batch again and exit again (issue 16's crash loops).
                self.metrics.rejected.labels("feed_client", "bad-records").inc()
                self.forget(batch.stream)
                self.reject(batch, UpstreamInvalid(f"{type(e).__name__}: {e}", stream=batch.stream))
                return
            self.apply(changes)

        self.upstream = FeedClient(
            self.ctx,
            self.endpoints.upstream,
            self.stores.upstream,
            on_batch,
            name=self.name,
            metrics=self.metrics,
            on_idle=self.idle,
            names=self.upstream_names,
        )
        return self.upstream

    async def follow_and_serve(self, *, cut: Cut | None = None) -> None:
        """The middle stages' main(): follow the upstream feed through ``handle``, commit
        at each burst's end, serve this service's stores downstream — until stopped, or in
        drain mode until the upstream is exhausted and every downstream peer has it all."""
        server = self.serve_feed(cut=cut)
        upstream = self.follow_upstream()
        await self.serve_while(
            server, asyncio.create_task(upstream.run(until_caught_up=self.drain))
        )

    async def serve_while(self, server: FeedServer, *work: asyncio.Task[None]) -> None:
        """Serve this service's stores downstream while ``work`` runs: until stopped (or
        one task fails), or in drain mode until the work is done, committed, and every
        downstream peer has it all."""
        serving = asyncio.create_task(server.run())
        if not self.drain:
            await self.serve_until_stopped(serving, *work)
            return
        try:
            await asyncio.gather(*work)
        except Exception:
            self.failed = True  # a batch may be half applied: commit nothing (DESIGN §6)
            raise
        finally:
            if not self.failed:
                self.commit()
        server.done = True
        drained = await server.wait_drained(timeout_s=DRAIN_RETURN_S, expect=self.drain_peers)
        server.close()
        await serving
        if not drained:
            owed = ", ".join(f"{name} ({why})" for name, why in server.owed.items())
            raise DrainIncomplete(
                f"{self.name}: drain mode: downstream {owed} left before it had every record "
                f"and did not come back within {DRAIN_RETURN_S:.0f}s; its stores are short"
            )

    async def idle(self) -> None:
        """The upstream has nothing more queued for us: a burst's end, commit."""
        self.maybe_commit(idle=True)

    async def serve_until_stopped(self, *tasks: asyncio.Task[None]) -> None:
        """Run background tasks (feed server, upstream client, …) until stop or one fails."""
        assert self.stopping is not None
        stop = asyncio.create_task(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            stop.cancel()

    def stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()
        if self.upstream is not None:
            self.upstream.close()

    async def close(self) -> None:
        """Commit what is written, then close sockets and stores."""
        delivered = False
        try:
            if self.stores.pending() and not self.failed and self.stores.failed is None:
                self.commit()
            if self.server is not None and self.server.peers:
                # Downstream peers get the last commit before we go (bounded).
                delivered = await self.server.deliver_pending(STOP_DELIVER_S)
        finally:
            if self.upstream is not None:
                self.upstream.close()
            if self.server is not None:
                self.server.close(linger_ms=int(STOP_DELIVER_S * 1000) if delivered else 0)
            self.stores.close()
            self.ctx.destroy(linger=0)
            self.metrics.close()

    async def _run(self) -> int:
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        if self._serve_metrics:
            try:
                self.metrics_port = self.metrics.serve(
                    self.endpoints.metrics_port or 0,
                    self.endpoints.metrics_host,
                    path=self.config.source,
                )
            except BindError:  # main() turns it into exit 2, naming the key
                await self.close()
                raise
        self.update_store_gauges()
        self.log.info("starting: %r", self)
        try:
            await self.main()
        except Exception:
            self.failed = True
            raise
        finally:
            summary = repr(self)  # close() empties the StoreSet: take the counters first
            await self.close()
            self.log.info("stopped: %s", summary)
        return EXIT_OK

    def run(self) -> int:
        """Run the service to completion in a fresh event loop (uvloop when available)."""
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
            return asyncio.run(self._run())
        return int(uvloop.run(self._run()))

    # -- changes and commits ------------------------------------------------------------

    def apply(self, changes: Changes, *, commit: bool = True) -> None:
        """Carry out a stage's changes (see the module docstring), then ``maybe_commit``
        (unless ``commit`` is False: a caller that commits at its own points)."""
        stores = self.stores.stores
        for change in changes:
            store = stores[change.key]
            before = store.length
            parts = change.parts
            if change.diff and change.start < before:
                records = parts[0] if len(parts) == 1 else np.concatenate(parts)
                first = store.replace_from(change.start, records)
            else:
                first = change.start
                if first >= before and not any(len(part) for part in parts):
                    continue  # nothing to append, nothing to drop
                store.write_parts(first, parts)
            if first == before == store.length:
                continue  # the store already read so
            if first < store.committed_length:
                self.metrics.rewinds.labels(*stream_labels(change.key)).inc()
            self.stores.touch(change.key)
            self.metrics.records_written.inc(store.length - first)
            self.changed(change.key, first)
        if commit:
            self.maybe_commit()

    def upstream_meta(self, batch: p.Batch, kind: str) -> StoreMeta | None:
        """The (symbol, side) of an upstream batch whose stream is ``SYMBOL/SIDE/<kind>``;
        anything else is a counted, logged rejection (None)."""
        try:
            meta = self.upstream_names.check(batch.stream)
        except RejectedName as e:
            self.metrics.rejected.labels("feed_client", e.reason).inc()
            self.reject(batch, e)
            return None
        if meta.timeframe != kind:
            self.metrics.rejected.labels("feed_client", "unknown-timeframe").inc()
            self.reject(batch, UpstreamInvalid(f"not a {kind!r} stream", stream=batch.stream))
            return None
        return meta

    def reject(self, batch: p.Batch, error: BarstreamError) -> None:
        """Drop an upstream batch this stage cannot take: counted (errors{kind=
        "upstream_invalid"}) and logged, never a crash."""
        self.metrics.errors.labels("upstream_invalid").inc()
        stream = printable(batch.stream)
        line = (
            f"dropped upstream batch {stream} [{batch.start}, {batch.start + batch.count}): {error}"
        )
        self.rejectlog.event("", f"upstream stream {stream}", str(error), line)

    def changed(self, key: str, first: int) -> None:
        """Store ``key`` changed from offset ``first`` on (called by ``apply``; the gateway
        publishes from it)."""
        return None

    def commit(self) -> None:
        """Flush stores and write the checkpoint; update gauges; the feed server is told."""
        t0 = time.perf_counter()
        self.stores.commit()
        self.metrics.commit_seconds.observe(time.perf_counter() - t0)
        self.metrics.commits.inc()
        self._last_commit = time.monotonic()
        self.update_store_gauges(self.stores.changed)

    def maybe_commit(self, *, idle: bool = False) -> bool:
        """Commit at a burst's end (``idle``) or every ``commit_interval_s`` while data flows.

        While the upstream feed is behind (a catch-up: more is committed upstream and on its
        way), a pause between batches is no burst's end: commits are grouped, at most one
        every ``CATCHUP_COMMIT_INTERVAL_S`` (each commit syncs every written store, the
        checkpoint and, for rewritten provisional tails, undo files)."""
        interval = self.config.pipeline.commit_interval_s
        if self.upstream is not None and self.upstream.behind:
            idle = False
            interval = max(interval, CATCHUP_COMMIT_INTERVAL_S)
        if not idle and time.monotonic() - self._last_commit < interval:
            return False
        if not self.stores.pending():
            return False
        self.commit()
        return True

    def update_store_gauges(self, keys: Collection[str] | None = None) -> None:
        """Set the store gauges of ``keys`` (None: every store). A commit passes the stores
        it changed: the others' gauges still hold, and this stays cheap with many stores."""
        stores = self.stores.stores
        for key in stores if keys is None else keys:
            store = stores.get(key)
            if store is None:
                continue
            labels = stream_labels(key)
            self.metrics.store_length.labels(*labels).set(store.length)
            self.metrics.committed_length.labels(*labels).set(store.committed_length)
            if store.committed_length:
                self.metrics.last_bar_time.labels(*labels).set(
                    int(store.view(store.committed_length - 1, store.committed_length)["ts_ms"][0])
                    / 1000
                )

    def __repr__(self) -> str:
        records = sum(s.length for s in self.stores)
        up = self.upstream
        inn = up.records_in if up is not None else 0
        out = self.server.records_out if self.server is not None else 0
        return f"<{type(self).__name__} in={inn} out={out} records={records} stores={len(self.stores.stores)}>"


def upstream_key_meta(key: str) -> StoreMeta:
    """The StoreMeta of an upstream store key ``SYMBOL/SIDE/TIMEFRAME`` whose parts are
    names (they become path components of this service's stores); raises UpstreamInvalid
    (a ``RejectedName``: shared/names.py)."""
    return check_shape(key)


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def main(service_cls: type[Service], argv: Sequence[str] | None = None) -> int:
    """Command-line entry of a service: ``python -m barstream.services.NAME --config FILE``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m barstream.services.{service_cls.name}",
        description=f"barstream {service_cls.name} service (see README, 'Operations').",
    )
    parser.add_argument("--config", "-c", type=Path, help="pipeline configuration file (TOML)")
    parser.add_argument(
        "--drain", action="store_true", help="exit once the upstream is exhausted (tests, rebuilds)"
    )
    parser.add_argument(
        "--drain-peers",
        default="",
        metavar="NAME,…",
        help="drain mode: the followers of this run (their feed client names), each waited "
        "for before this service exits, however late it connects (rebuild passes them)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)"
    )
    args = parser.parse_args(argv)
    memory.tune()  # before the first batch is allocated (shared/memory.py)
    setup_logging(service_cls.name, args.log_level)
    log = logging.getLogger(f"barstream.{service_cls.name}")
    config = str(args.config) if args.config else ""
    try:
        cfg = config_mod.load(args.config) if args.config else config_mod.default()
        service = service_cls(cfg, drain=args.drain)
        service.drain_peers = tuple(n for n in args.drain_peers.split(",") if n)
    except BarstreamError as e:
        if own_file_damage(e):  # a damaged own store or checkpoint: a restart cannot help
            log.critical("%s", needs_operator(service_cls.name, e, config))
            return EXIT_NEEDS_OPERATOR
        log.error("cannot start: %s", e)
        return EXIT_USAGE
    try:
        return service.run()
    except ConfigError as e:  # a configured port it cannot listen on (BindError): exit 2
        log.error("cannot start: %s", e)
        return EXIT_USAGE
    except BarstreamError as e:
        if own_file_damage(e):  # e.g. a store file deleted while the service ran
            log.critical("%s", needs_operator(service_cls.name, e, config))
            return EXIT_NEEDS_OPERATOR
        log.error("stopped on error: %s", e)
        return EXIT_ERROR
    except OSError as e:
        # Disk full, fsync failure, …: never retried in place. supervisord restarts us and
        # we resume from the last checkpoint.
        log.error("stopped on I/O error: %s (resuming from the last checkpoint on restart)", e)
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
