"""``barstream status``: what every service is doing, from its /metrics endpoint, supervisord
and (when a service is down) its checkpoint.

Pure parts first: ``parse_metrics`` (Prometheus text → samples), ``service_status`` (one
service's samples → a summary), ``render`` (summaries → text). ``collect`` does the I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from barstream.configs import metrics_url
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.config import SERVICES, Config
from barstream.shared.errors import CheckpointCorrupt
from barstream.supervise import Supervisor, program

SCRAPE_TIMEOUT_S = 2.0

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


def value(samples: Samples, name: str) -> float | None:
    got = samples.get(name)
    return sum(v for _, v in got) if got else None


@dataclass
class StreamStatus:
    length: int = 0
    committed: int = 0
    last_bar_ms: int | None = None
    lag_records: float | None = None


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
    peers: float | None = None
    streams: dict[str, StreamStatus] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)  # downloader: stream → gap days
    held: list[str] = field(default_factory=list)  # transformer: held streams
    errors: dict[str, float] = field(default_factory=dict)  # kind → count

    @property
    def faults(self) -> list[str]:
        out = []
        if not self.up:
            out.append(f"{self.name}: down ({self.error or self.supervisor_state or 'no metrics'})")
        out += [f"{self.name}: {s}: {n} gap day(s)" for s, n in sorted(self.gaps.items()) if n]
        out += [f"{self.name}: {s}: held by a bad payload" for s in self.held]
        return out


def service_status(name: str, url: str, samples: Samples) -> ServiceStatus:
    """One service's summary from its scraped samples."""
    st = ServiceStatus(name, url, up=True)
    st.records_in = value(samples, "barstream_records_in_total")
    st.records_written = value(samples, "barstream_records_written_total")
    st.records_out = value(samples, "barstream_records_out_total")
    st.feed_lag_seconds = value(samples, "barstream_feed_lag_seconds")
    st.peers = value(samples, "barstream_feed_peers")
    lengths = by_label(samples, "barstream_store_length_records", "stream")
    committed = by_label(samples, "barstream_committed_length_records", "stream")
    last = by_label(samples, "barstream_last_bar_time_seconds", "stream")
    lag = by_label(samples, "barstream_feed_lag_records", "stream")
    for key in sorted(set(lengths) | set(committed)):
        st.streams[key] = StreamStatus(
            length=int(lengths.get(key, 0)),
            committed=int(committed.get(key, 0)),
            last_bar_ms=int(last[key] * 1000) if key in last else None,
        )
    for key, n in lag.items():
        st.streams.setdefault(key, StreamStatus()).lag_records = n
    # barstream_gaps (days that are explicit gaps, per stream); barstream_gap_days before
    # promtool's unit lint renamed it
    gaps = by_label(samples, "barstream_gaps", "stream") or by_label(
        samples, "barstream_gap_days", "stream"
    )
    st.gaps = {k: int(v) for k, v in gaps.items()}
    st.held = sorted(
        k for k, v in by_label(samples, "barstream_held_streams", "stream").items() if v
    )
    st.errors = {k: v for k, v in by_label(samples, "barstream_errors_total", "kind").items() if v}
    return st


def offline_status(name: str, url: str, root: Path, error: str) -> ServiceStatus:
    """A down service: its committed store lengths from the checkpoint."""
    st = ServiceStatus(name, url, up=False, error=error)
    with contextlib.suppress(CheckpointCorrupt, OSError):
        point = Checkpoint(root / "checkpoint.json").load()
        if point is not None:
            for key, mark in point.stores.items():
                st.streams[key] = StreamStatus(length=mark.length, committed=mark.length)
            held = point.state.get("held")
            if isinstance(held, dict):
                st.held = sorted(held)
    return st


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body.decode()


def collect(cfg: Config, supervisor: Supervisor | None) -> list[ServiceStatus]:
    states: dict[str, str] = {}
    if supervisor is not None and supervisor.running():
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            states = {k: str(v["statename"]) for k, v in supervisor.processes().items()}
    out = []
    for name in SERVICES:
        url = metrics_url(cfg, name)
        try:
            st = service_status(name, url, parse_metrics(scrape(url)))
        except (OSError, urllib.error.URLError, ValueError) as e:
            reason = getattr(e, "reason", e)
            st = offline_status(name, url, cfg.data_dir(name), f"{url}: {reason}")
        st.supervisor_state = states.get(program(name), "")
        out.append(st)
    return out


def as_json(statuses: list[ServiceStatus]) -> dict[str, Any]:
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
        {"ok": not faults, "faults": faults, "services": {s.name: asdict(s) for s in statuses}}
    )
    return out


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1 or x == 0 else f"{x:.2f}"


def render(statuses: list[ServiceStatus], *, streams: bool = True) -> str:
    lines = [
        f"{'service':<12} {'state':<9} {'supervisor':<10} {'in':>12} {'written':>12} "
        f"{'out':>12} {'lag_s':>7} {'stores':>6} {'records':>12}"
    ]
    for s in statuses:
        lag = "-" if s.feed_lag_seconds is None else f"{s.feed_lag_seconds:.1f}"
        lines.append(
            f"{s.name:<12} {'up' if s.up else 'DOWN':<9} {s.supervisor_state or '-':<10} "
            f"{_num(s.records_in):>12} {_num(s.records_written):>12} {_num(s.records_out):>12} "
            f"{lag:>7} {len(s.streams):>6} {sum(x.length for x in s.streams.values()):>12,}"
        )
    if streams:
        for s in statuses:
            if not s.streams:
                continue
            lines.append("")
            lines.append(
                f"{s.name}: {'stream':<24} {'length':>10} {'committed':>10} "
                f"{'lag':>6}  last bar (UTC)"
            )
            for key, x in sorted(s.streams.items()):
                lag = "-" if x.lag_records is None else f"{x.lag_records:.0f}"
                lines.append(
                    f"{'':<{len(s.name)}}  {key:<24} {x.length:>10,} {x.committed:>10,} "
                    f"{lag:>6}  {_when(x.last_bar_ms)}"
                )
    errors = [(s.name, k, v) for s in statuses for k, v in sorted(s.errors.items())]
    if errors:
        lines.append("")
        lines.append("errors: " + ", ".join(f"{n} {k}={v:.0f}" for n, k, v in errors))
    faults = [f for s in statuses for f in s.faults]
    lines.append("")
    lines.append("faults: none" if not faults else "faults:\n  " + "\n  ".join(faults))
    return "\n".join(lines)
