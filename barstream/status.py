"""``barstream status``: what every service is doing, from its /metrics endpoint, supervisord
and (when a service is down) its checkpoint. The text views are in ``barstream.status_view``.

Pure parts first: ``parse_metrics`` (Prometheus text → samples), ``service_status`` (one
service's samples → a summary), ``select`` (the ``--service``/``--symbol`` filters),
``attention`` (the streams and services that need a look), ``as_json``. ``collect`` does the
I/O.

A service's *stores* (``barstream_store_length_records`` …) and its *upstream lag*
(``barstream_feed_lag_records``, labelled with the upstream's stream keys: the transformer's
are ``…/fetch``) are kept apart: ``ServiceStatus.streams`` holds only the service's own
stores, ``ServiceStatus.upstream_lag`` the records it is behind per upstream stream.
Store keys sort by symbol, side (BID, ASK) and timeframe duration (``stream_order``).

The history the stores lack — held streams with their bad day and field, gap runs, days
skipped by the user — is read from the data directory by ``barstream.missing`` (the
``missing`` list of ``as_json``, the same items ``rebuild`` and ``verify`` print); a
downloader that is down has its gap counts read from its journals.

Health (barstream.shared.health): each service says whether it is healthy, degraded or
failed and why (``barstream_health_state``/``barstream_health_reason``); a service that does
not answer is ``failed`` with the reason ``down`` (``judge_health``). ``as_json`` carries
each service's ``health`` and ``reasons``, the worst state as ``health`` and the services
that are not healthy as ``unhealthy`` (name → reasons).

Needs attention (not faults; the exit code counts only ``ServiceStatus.faults``: a service
down, a gap day — also one skipped by the user —, a held stream): a service behind its upstream for ``LAG_ATTENTION_S`` or
more, or not hearing from it for ``SILENT_ATTENTION_S``; a store with gap days, held, or
whose last bar is more than ``STALL_BEHIND_MS`` behind the newest of its timeframe in the
same service.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from barstream import missing
from barstream.configs import metrics_url
from barstream.shared import health as hm
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.config import SERVICES, SIDES, Config
from barstream.shared.errors import CheckpointCorrupt, ConfigError
from barstream.shared.metrics import STREAM_LABELS
from barstream.shared.timeframe import DAY_MS, Timeframe
from barstream.supervise import Supervisor, program

SCRAPE_TIMEOUT_S: Final = 2.0
#: A service behind its upstream for this long is listed under "needs attention".
LAG_ATTENTION_S: Final = 5.0
#: An upstream silent for this long is listed (the feed heartbeats every second).
SILENT_ATTENTION_S: Final = 30.0
#: A store whose last bar is more than this behind the newest bar of the same timeframe in
#: the same service is listed (a market closed for a holiday shows up too: it is a hint).
STALL_BEHIND_MS: Final = DAY_MS

#: sample name → [(labels, value)]
Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition → samples by name (counters keep their ``_total``)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {lbl.get(label, ""): v for lbl, v in samples.get(name, [])}


def by_stream(samples: Samples, name: str) -> dict[str, float]:
    """Samples of ``name`` by store key: its ``symbol``/``side``/``timeframe`` labels joined
    (``SYMBOL/SIDE/TIMEFRAME``; a key that was not one is in ``symbol`` alone), or the one
    ``stream`` label services before issue 17 exported."""
    out: dict[str, float] = {}
    for lbl, v in samples.get(name, []):
        parts = [lbl.get(k, "") for k in STREAM_LABELS]
        key = "/".join(parts) if parts[1] or parts[2] else parts[0] or lbl.get("stream", "")
        out[key] = v
    return out


def value(samples: Samples, name: str) -> float | None:
    got = samples.get(name)
    return sum(v for _, v in got) if got else None


def split_key(key: str) -> tuple[str, str, str]:
    """``SYMBOL/SIDE/TIMEFRAME`` → its three parts (``(key, "", "")`` if it is not one)."""
    parts = key.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (key, "", "")


def timeframe_order(text: str) -> tuple[int, int, int, str]:
    """Timeframes by duration (1m … 4h, 1d, 1W, 1M, 1Y), a feature store's ``TF.SET`` after
    its timeframe's bars; other words (``fetch``) first."""
    try:
        rank = Timeframe.parse(text.partition(".")[0]).sort_key
    except ConfigError:
        return (0, 0, 0, text)
    return (1, *rank, text)


def stream_order(key: str) -> tuple[str, int, tuple[int, int, int, str]]:
    """Store keys by symbol, side (BID, ASK) and timeframe duration."""
    symbol, side, tf = split_key(key)
    return symbol, SIDES.index(side) if side in SIDES else len(SIDES), timeframe_order(tf)


@dataclass
class StreamStatus:
    length: int = 0
    committed: int = 0
    last_bar_ms: int | None = None


@dataclass
class ServiceStatus:
    name: str
    metrics_url: str
    up: bool = False  # /metrics answered
    supervisor_state: str = ""  # RUNNING, STOPPED, … ("" when supervisord is not running)
    error: str = ""  # why /metrics did not answer
    records_in: float | None = None
    records_written: float | None = None
    records_out: float | None = None
    feed_lag_seconds: float | None = None
    heartbeat_age_s: float | None = None  # silence of the upstream
    peers: float | None = None
    streams: dict[str, StreamStatus] = field(default_factory=dict)  # own stores only
    upstream_lag: dict[str, float] = field(default_factory=dict)  # upstream stream → records
    gaps: dict[str, int] = field(default_factory=dict)  # downloader: stream → gap days
    skipped: dict[str, int] = field(default_factory=dict)  # of those, skipped by the user
    held: list[str] = field(default_factory=list)  # transformer: held streams
    errors: dict[str, float] = field(default_factory=dict)  # kind → count
    health: str = ""  # healthy, degraded, failed (barstream.shared.health; judge_health)
    reasons: list[str] = field(default_factory=list)  # hm.REASONS words, and "down"

    @property
    def faults(self) -> list[str]:
        out = []
        if not self.up:
            out.append(f"{self.name}: down ({self.error or self.supervisor_state or 'no metrics'})")
        gaps = sorted(self.gaps.items(), key=lambda x: stream_order(x[0]))
        out += [f"{self.name}: {s}: {n} gap day(s){self._skipped(s)}" for s, n in gaps if n]
        out += [f"{self.name}: {s}: held by a bad payload" for s in self.held]
        return out

    def _skipped(self, stream: str) -> str:
        n = self.skipped.get(stream, 0)
        return f" ({n} skipped by the user)" if n else ""

    @property
    def behind_records(self) -> float | None:
        return sum(self.upstream_lag.values()) if self.upstream_lag else None

    @property
    def newest_bar_ms(self) -> int | None:
        times = [s.last_bar_ms for s in self.streams.values() if s.last_bar_ms is not None]
        return max(times) if times else None


def service_status(name: str, url: str, samples: Samples) -> ServiceStatus:
    """One service's summary from its scraped samples."""
    st = ServiceStatus(name, url, up=True)
    st.records_in = value(samples, "barstream_records_in_total")
    st.records_written = value(samples, "barstream_records_written_total")
    st.records_out = value(samples, "barstream_records_out_total")
    st.feed_lag_seconds = value(samples, "barstream_feed_lag_seconds")
    st.heartbeat_age_s = value(samples, "barstream_upstream_heartbeat_age_seconds")
    st.peers = value(samples, "barstream_feed_peers")
    lengths = by_stream(samples, "barstream_store_length_records")
    committed = by_stream(samples, "barstream_committed_length_records")
    last = by_stream(samples, "barstream_last_bar_time_seconds")
    for key in sorted(set(lengths) | set(committed), key=stream_order):
        st.streams[key] = StreamStatus(
            length=int(lengths.get(key, 0)),
            committed=int(committed.get(key, 0)),
            last_bar_ms=int(last[key] * 1000) if key in last else None,
        )
    lag = by_stream(samples, "barstream_feed_lag_records")
    st.upstream_lag = {k: lag[k] for k in sorted(lag, key=stream_order)}
    # barstream_gaps (days that are explicit gaps, per stream); barstream_gap_days before
    # promtool's unit lint renamed it
    gaps = by_stream(samples, "barstream_gaps") or by_stream(samples, "barstream_gap_days")
    st.gaps = {k: int(v) for k, v in gaps.items()}
    st.skipped = {k: int(v) for k, v in by_stream(samples, "barstream_gaps_skipped").items()}
    st.held = sorted(
        (k for k, v in by_stream(samples, "barstream_held_streams").items() if v), key=stream_order
    )
    st.errors = {k: v for k, v in by_label(samples, "barstream_errors_total", "kind").items() if v}
    judge_health(st, samples)
    return st


#: The reason of a service that does not answer (its state is ``failed``).
DOWN: Final = "down"


def judge_health(st: ServiceStatus, samples: Samples | None = None) -> ServiceStatus:
    """Set ``st.health`` and ``st.reasons``: a service that answers says it itself
    (``barstream_health_state``/``_reason``, barstream.shared.health); one that does not is
    ``failed`` (reason ``down``, plus what its checkpoint and journals still tell); one
    whose metrics predate the health model is judged here from the same facts."""
    if not st.up:
        st.reasons = [DOWN] + [hm.HELD] * bool(st.held) + [hm.GAP] * any(st.gaps.values())
        st.health = hm.FAILED
        return st
    said = by_label(samples or {}, hm.REASON_METRIC, "reason")
    states = by_label(samples or {}, hm.STATE_METRIC, "state")
    if said or states:
        st.reasons = [r for r in hm.REASONS if said.get(r)]
        st.health = next((k for k, v in states.items() if v), hm.state_of(st.reasons))
        return st
    found = {
        hm.HELD: bool(st.held),
        hm.GAP: any(st.gaps.values()),
        hm.UPSTREAM_STALLED: (st.heartbeat_age_s or 0.0) >= hm.STALLED_S,
        hm.LAG: (st.feed_lag_seconds or 0.0) >= hm.LAG_S,
    }
    st.reasons = [r for r in hm.REASONS if found.get(r)]
    st.health = hm.state_of(st.reasons)
    return st


def overall_health(statuses: Iterable[ServiceStatus]) -> str:
    """The worst state of the services (healthy when there are none)."""
    states = {s.health or hm.HEALTHY for s in statuses}
    return next((x for x in reversed(hm.STATES) if x in states), hm.HEALTHY)


def offline_status(name: str, url: str, root: Path, error: str) -> ServiceStatus:
    """A down service: its committed store lengths from the checkpoint."""
    st = ServiceStatus(name, url, up=False, error=error)
    with contextlib.suppress(CheckpointCorrupt, OSError):
        point = Checkpoint(root / "checkpoint.json").load()
        if point is not None:
            for key in sorted(point.stores, key=stream_order):
                mark = point.stores[key]
                st.streams[key] = StreamStatus(length=mark.length, committed=mark.length)
            held = point.state.get("held")
            if isinstance(held, dict):
                st.held = sorted(held, key=stream_order)
    if name == "downloader":
        with contextlib.suppress(OSError):
            counts = missing.journal_gaps(root.parent)
            st.gaps = {k: g for k, (g, _) in counts.items()}
            st.skipped = {k: n for k, (_, n) in counts.items()}
    return judge_health(st)


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body.decode()


def collect(
    cfg: Config, supervisor: Supervisor | None, services: Iterable[str] = SERVICES
) -> list[ServiceStatus]:
    """Every named service's status (scraped, or from its checkpoint when it is down)."""
    states: dict[str, str] = {}
    if supervisor is not None and supervisor.running():
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            states = {k: str(v["statename"]) for k, v in supervisor.processes().items()}
    out = []
    for name in services:
        url = metrics_url(cfg, name)
        try:
            st = service_status(name, url, parse_metrics(scrape(url)))
        except (OSError, urllib.error.URLError, ValueError) as e:
            reason = getattr(e, "reason", e)
            st = offline_status(name, url, cfg.data_dir(name), f"{url}: {reason}")
        st.supervisor_state = states.get(program(name), "")
        out.append(st)
    return out


def collect_remote(cfg: Config, services: Iterable[str] = SERVICES) -> list[ServiceStatus]:
    """Every named service's status from its /metrics endpoint only (no supervisord, no
    files: what a client on another host can know); a service that does not answer is down."""

    def one(name: str) -> ServiceStatus:
        url = metrics_url(cfg, name)
        try:
            return service_status(name, url, parse_metrics(scrape(url)))
        except (OSError, urllib.error.URLError, ValueError) as e:
            down = ServiceStatus(name, url, error=f"{url}: {getattr(e, 'reason', e)}")
            return judge_health(down)

    names = list(services)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
        return list(pool.map(one, names))


def select(
    statuses: Iterable[ServiceStatus],
    *,
    services: Collection[str] = (),
    symbols: Collection[str] = (),
) -> list[ServiceStatus]:
    """Only the named services (all when empty), and of their streams, gaps, held streams and
    upstream lag only those of the named symbols (all when empty)."""
    out = []
    for s in statuses:
        if services and s.name not in services:
            continue
        if symbols:

            def keep(key: str) -> bool:
                return split_key(key)[0] in symbols

            s = dataclasses.replace(
                s,
                streams={k: v for k, v in s.streams.items() if keep(k)},
                upstream_lag={k: v for k, v in s.upstream_lag.items() if keep(k)},
                gaps={k: v for k, v in s.gaps.items() if keep(k)},
                skipped={k: v for k, v in s.skipped.items() if keep(k)},
                held=[k for k in s.held if keep(k)],
            )
        out.append(s)
    return out


@dataclass(frozen=True)
class Attention:
    """Something to look at: a store of ``service`` (``stream``), or the service itself
    (``stream`` empty); ``kind`` is one of ``KINDS``, ``why`` says it in words."""

    service: str
    stream: str
    kind: str
    why: str
    store: StreamStatus | None = None


#: The kinds of attention items, in the order they are listed within a service.
KINDS: Final = ("silent", "lag", "gaps", "held", "stalled")


def attention(statuses: Iterable[ServiceStatus]) -> list[Attention]:
    """Per service (in order): not hearing from its upstream, behind its upstream, then its
    stores with gap days, held by a bad payload, or stalled (each kind in stream order)."""
    out: list[Attention] = []
    for s in statuses:
        if s.up and s.heartbeat_age_s is not None and s.heartbeat_age_s >= SILENT_ATTENTION_S:
            why = f"no upstream message for {s.heartbeat_age_s:.0f}s"
            out.append(Attention(s.name, "", "silent", why))
        behind = [k for k, n in s.upstream_lag.items() if n > 0]
        lag_s = s.feed_lag_seconds or 0.0
        if s.up and behind and lag_s >= LAG_ATTENTION_S:
            records = sum(s.upstream_lag[k] for k in behind)
            why = f"{lag_s:.0f}s behind upstream: {records:,.0f} records, {len(behind)} streams"
            out.append(Attention(s.name, "", "lag", why))
        stores = [
            *((k, "gaps", f"{n} gap day(s){s._skipped(k)}") for k, n in s.gaps.items() if n),
            *((k, "held", "held by a bad payload") for k in s.held),
            *((k, "stalled", text) for k, text in _stalled(s).items()),
        ]
        stores.sort(key=lambda x: (KINDS.index(x[1]), stream_order(x[0])))
        out += [Attention(s.name, k, kind, why, s.streams.get(k)) for k, kind, why in stores]
    return out


def _stalled(s: ServiceStatus) -> dict[str, str]:
    """Stores whose last bar is more than STALL_BEHIND_MS behind the newest of their
    timeframe in this service."""
    newest: dict[str, int] = {}
    for key, x in s.streams.items():
        if x.last_bar_ms is not None:
            tf = split_key(key)[2]
            newest[tf] = max(newest.get(tf, x.last_bar_ms), x.last_bar_ms)
    out = {}
    for key, x in s.streams.items():
        tf = split_key(key)[2]
        if x.last_bar_ms is not None and newest[tf] - x.last_bar_ms > STALL_BEHIND_MS:
            days = (newest[tf] - x.last_bar_ms) / DAY_MS
            out[key] = f"{days:.1f} days behind the newest {tf}"
    return out


def as_json(
    statuses: list[ServiceStatus], lacking: Iterable[missing.Missing] = (), config: str = ""
) -> dict[str, Any]:
    """Everything as JSON; ``lacking``: the history the stores lack (``missing.scan``),
    listed with each item's message and what to do (commands naming ``config``)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    faults = [f for s in statuses for f in s.faults]
    out: dict[str, Any] = clean(
        {
            "ok": not faults,
            "health": overall_health(statuses),
            "unhealthy": {s.name: s.reasons for s in statuses if s.health != hm.HEALTHY},
            "faults": faults,
            "attention": [asdict(a) for a in attention(statuses)],
            "missing": [m.as_json(config or None) for m in lacking],
            "services": {s.name: asdict(s) for s in statuses},
        }
    )
    return out
