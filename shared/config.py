"""One configuration file for the whole pipeline (TOML), validated once at start.

Every error names the key path and the bad value::

    ConfigError: barstream.toml: downloader.requests_per_second = -1: must be > 0

Nothing below ``__main__`` reads the environment: settings are built here, at the edge,
and passed down as typed objects. See README "Configuration" for every key.

Endpoints are resolved here, once: unset ones get their defaults (feeds 7101.., metrics
9101.., gateway 7110/7111), then ``pipeline.port_offset`` shifts every TCP port of the run —
feeds, upstreams, metrics, gateway, the fake upstream and the ``downloader.base_url`` that
names the fake's port — so every service and command reading the file sees the same ports.
``tcp_listens`` lists the ports a run listens on (the CLI checks them before it starts).
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from barstream.shared.errors import ConfigError

#: The stages, upstream before downstream. Each follows ``UPSTREAM_OF`` its own (the
#: features stage and the gateway both follow the resampler; the gateway also follows the
#: features stage when feature sets are configured).
SERVICES: Final = ("downloader", "transformer", "aggregator", "resampler", "features", "gateway")
UPSTREAM_OF: Final = {
    "transformer": "downloader",
    "aggregator": "transformer",
    "resampler": "aggregator",
    "features": "resampler",
    "gateway": "resampler",
}
#: The feed client name of the gateway's second upstream (the features stage's feed).
FEATURES_FOLLOWER: Final = "gateway.features"
#: The configuration table of a service's settings where it is not the service's name
#: (``[[features]]`` is the list of feature sets; the stage's own settings are
#: ``[features_stage]``).
SECTIONS: Final = {"features": "features_stage"}
#: Each service's default port slot: feed 7101 + slot, metrics 9101 + slot (the features
#: stage came after the gateway's ports were known to users, so it has slot 5).
PORT_SLOTS: Final = {
    "downloader": 0,
    "transformer": 1,
    "aggregator": 2,
    "resampler": 3,
    "gateway": 4,
    "features": 5,
}


def section(service: str) -> str:
    """The configuration table holding ``service``'s settings (``endpoints`` …)."""
    return SECTIONS.get(service, service)


SIDES: Final = ("BID", "ASK")
DEFAULT_TIMEFRAMES: Final = ("5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y")
_SYMBOL = re.compile(r"^[A-Z0-9]+(\.[A-Z0-9]+)?-[A-Z0-9]+$")
#: What a symbol looks like (EUR-USD, XAU-USD, DEU.IDX-EUR, BRENT.CMD-USD).
SYMBOL_RE: Final = _SYMBOL


class Endpoints(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where one service binds its feed and metrics, and where it finds its upstream."""

    feed: str = ""  # bind address of this service's feed (ROUTER)
    upstream: str = ""  # connect address of the upstream's feed (DEALER); "" = derived
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: the default port; 0: any free port


class PipelineConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "var/data"
    symbols: list[str] = msgspec.field(default_factory=lambda: ["EUR-USD"])
    #: A symbols file in the original project's format (a ``symbol`` header, then one
    #: ``EUR/USD`` a line), relative to the configuration file; its symbols join ``symbols``
    #: (which then defaults to none).
    symbols_file: str = ""
    sides: list[str] = msgspec.field(default_factory=lambda: ["BID"])
    start_date: dt.date = dt.date(2026, 1, 5)
    #: Host services bind to (127.0.0.1 unless you need another host to connect).
    host: str = "127.0.0.1"
    #: Commit at most this often while data flows (a burst's end always commits).
    commit_interval_s: float = 0.05
    #: Added to every TCP port of the run (defaults and configured ones): a second instance
    #: beside another on one host.
    port_offset: int = 0


class DownloaderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    base_url: str = "https://jetta.dukascopy.com"
    requests_per_second: float = 4.0
    burst: int = 4
    timeout_s: float = 20.0
    max_retries: int = 6
    live_poll_interval_s: float = 10.0
    refetch_days: int = 3
    refetch_interval_s: float = 3600.0
    gap_retry_interval_s: float = 600.0
    cache_only: bool = False
    end_date: dt.date | None = None  # stop at this day (inclusive) instead of following today
    history_start: dict[str, dt.date] = {}
    #: The most bytes one response body may have, as sent and after gzip/deflate: more is
    #: refused (``oversized``), retried, then a gap. A day of minute candles is < 1 MB.
    max_body_bytes: int = 16 << 20
    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class TransformerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Seconds the decode helper has to take a batch and answer it (plus
    #: ``decode_helper_timeout_per_day_s`` per day): past it the helper is killed and
    #: restarted, and that batch is decoded in the transformer.
    decode_helper_timeout_s: float = 2.0
    decode_helper_timeout_per_day_s: float = 0.005
    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class AggregatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class SessionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    timezone: str
    start: str  # "HH:MM" local
    end: str  # "HH:MM" local; may be earlier than start (wraps midnight)
    weekdays: list[int] = msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4])  # Monday = 0
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    #: timeframe → local "HH:MM" its bars are anchored at in this session (default: start)
    origins: dict[str, str] = {}


class ResamplerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    alignment: Literal["utc", "mt4"] = "utc"
    timeframes: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TIMEFRAMES))
    sessions: dict[str, list[SessionConfig]] = {}
    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class FeaturesStageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[features_stage]``: where the features stage binds and follows (its work is the
    ``[[features]]`` sets)."""

    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    publish: str = ""  # PUB endpoint for live bar updates
    requests: str = ""  # ROUTER endpoint for history/snapshot/list/status requests
    max_request_records: int = 1_000_000
    #: Live messages queued per consumer before the publish socket drops (the consumer's
    #: client then sees a sequence gap and resyncs).
    publish_hwm: int = 10_000
    #: Connect address of the features stage's feed (feature stores), followed when
    #: ``[[features]]`` sets are configured; "" = derived from features_stage.endpoints.feed.
    features_upstream: str = ""
    endpoints: Endpoints = msgspec.field(default_factory=Endpoints)


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``barstream serve``: the HTTP API and chart page, a client of the gateway."""

    host: str = ""  # "" = pipeline.host
    port: int = 8790  # 0: any free port (logged)
    #: Most bars one request may return (a larger range is refused 413, naming this).
    max_records: int = 2_000_000
    #: Gateway request connections shared by the HTTP requests in flight.
    gateway_connections: int = 8
    #: Live (SSE) streams served at once (more are refused 503).
    max_streams: int = 256
    #: Seconds between keep-alive comments on an idle SSE stream.
    keepalive_s: float = 15.0
    #: Where the API connects to the gateway ("" = gateway.publish / gateway.requests, a
    #: wildcard host read as this host): set them when the API runs on another host or
    #: container (compose: tcp://gateway:7110 and tcp://gateway:7111).
    gateway_publish: str = ""
    gateway_requests: str = ""
    #: Seconds a client may take to send a request's head (slow clients are cut off).
    header_timeout_s: float = 10.0
    #: Seconds a response may wait for a client that does not read (then it is cut off).
    send_timeout_s: float = 30.0


class FakeUpstreamConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: int = 8787
    speed: float = 60.0
    seed: int = 1
    #: Simulated UTC time at the fake's start, ISO ("2026-06-24T12:00"); "" = now.
    start: str = ""


class IndicatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One indicator of a feature set: ``{kind = "rsi", params = {period = 14}}``."""

    kind: str
    params: dict[str, Any] = {}
    name: str = ""  # column label; "" = kind and parameter values (rsi_14)


class FeatureSetConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A ``[[features]]`` table: indicators computed on bars of ``timeframes``."""

    name: str
    timeframes: list[str] = msgspec.field(default_factory=lambda: ["1m"])
    indicators: list[IndicatorConfig] = []


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    downloader: DownloaderConfig = msgspec.field(default_factory=DownloaderConfig)
    transformer: TransformerConfig = msgspec.field(default_factory=TransformerConfig)
    aggregator: AggregatorConfig = msgspec.field(default_factory=AggregatorConfig)
    resampler: ResamplerConfig = msgspec.field(default_factory=ResamplerConfig)
    features_stage: FeaturesStageConfig = msgspec.field(default_factory=FeaturesStageConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    fake_upstream: FakeUpstreamConfig = msgspec.field(default_factory=FakeUpstreamConfig)
    #: ``[[features]]``: feature sets (services/features/spec.py checks the indicators).
    features: list[FeatureSetConfig] = []
    #: Where the file was read from ("" when built in code); set by ``load``.
    source: str = ""

    def endpoints(self, service: str) -> Endpoints:
        ep: Endpoints = getattr(self, section(service)).endpoints
        return ep

    def data_dir(self, service: str) -> Path:
        return Path(self.pipeline.data_dir) / service

    def streams(self) -> list[tuple[str, str]]:
        return [(s, side) for s in self.pipeline.symbols for side in self.pipeline.sides]


#: Default ports: feed 7101.., metrics 9101.. by ``PORT_SLOTS``; gateway consumers 7110/7111.
BASE_FEED_PORT: Final = 7101
BASE_METRICS_PORT: Final = 9101


def _fill_defaults(cfg: Config) -> None:
    host = cfg.pipeline.host
    for name in SERVICES:
        ep = cfg.endpoints(name)
        if not ep.feed:
            ep.feed = f"tcp://{host}:{BASE_FEED_PORT + PORT_SLOTS[name]}"
        if ep.metrics_port is None:
            ep.metrics_port = BASE_METRICS_PORT + PORT_SLOTS[name]
    for name, up in UPSTREAM_OF.items():
        ep = cfg.endpoints(name)
        if not ep.upstream:
            ep.upstream = connect_address(cfg.endpoints(up).feed)
    if not cfg.gateway.features_upstream:
        cfg.gateway.features_upstream = connect_address(cfg.endpoints("features").feed)
    if not cfg.gateway.publish:
        cfg.gateway.publish = f"tcp://{host}:7110"
    if not cfg.gateway.requests:
        cfg.gateway.requests = f"tcp://{host}:7111"
    if not cfg.api.host:
        cfg.api.host = host
    if not cfg.api.gateway_publish:
        cfg.api.gateway_publish = connect_address(cfg.gateway.publish)
    if not cfg.api.gateway_requests:
        cfg.api.gateway_requests = connect_address(cfg.gateway.requests)


#: Wildcard bind hosts → the loopback address a peer on the same host connects to.
_WILDCARD_HOSTS: Final = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def connect_host(host: str) -> str:
    """A bind host as a peer on this host connects to it (0.0.0.0 / * → 127.0.0.1, :: → ::1)."""
    return _WILDCARD_HOSTS.get(host, host)


def connect_address(bind: str) -> str:
    """A ZeroMQ bind address as a peer connects to it (``tcp://0.0.0.0:7110`` →
    ``tcp://127.0.0.1:7110``); ipc:// and explicit hosts are unchanged."""
    scheme, sep, rest = bind.partition("://")
    if scheme != "tcp" or not sep or ":" not in rest:
        return bind
    host, port = rest.rsplit(":", 1)
    host = connect_host(host.strip("[]"))
    return f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"


def _check(cfg: Config) -> None:
    def bad(key: str, value: object, why: str) -> ConfigError:
        return ConfigError(key, value, why, path=cfg.source)

    p = cfg.pipeline
    if not p.symbols:
        raise bad("pipeline.symbols", p.symbols, "list at least one symbol")
    for i, s in enumerate(p.symbols):
        if not _SYMBOL.match(s):
            raise bad(
                f"pipeline.symbols[{i}]", s, "symbols look like EUR-USD, XAU-USD, DEU.IDX-EUR"
            )
    for i, side in enumerate(p.sides):
        if side not in SIDES:
            raise bad(f"pipeline.sides[{i}]", side, "must be BID or ASK")
    if len(set(p.symbols)) != len(p.symbols):
        raise bad("pipeline.symbols", p.symbols, "symbols repeat")
    if p.commit_interval_s <= 0:
        raise bad("pipeline.commit_interval_s", p.commit_interval_s, "must be > 0")
    d = cfg.downloader
    for key in (
        "requests_per_second",
        "timeout_s",
        "live_poll_interval_s",
        "refetch_interval_s",
        "gap_retry_interval_s",
    ):
        if getattr(d, key) <= 0:
            raise bad(f"downloader.{key}", getattr(d, key), "must be > 0")
    if d.burst < 1:
        raise bad("downloader.burst", d.burst, "must be >= 1")
    if d.max_retries < 0:
        raise bad("downloader.max_retries", d.max_retries, "must be >= 0")
    if d.refetch_days < 0:
        raise bad("downloader.refetch_days", d.refetch_days, "must be >= 0")
    if not d.base_url.startswith(("http://", "https://")):
        raise bad("downloader.base_url", d.base_url, "must start with http:// or https://")
    if d.end_date is not None and d.end_date < p.start_date:
        raise bad("downloader.end_date", str(d.end_date), "is before pipeline.start_date")
    if not 1 << 10 <= d.max_body_bytes <= 1 << 30:
        raise bad("downloader.max_body_bytes", d.max_body_bytes, "must be 1024 … 1073741824")
    t = cfg.transformer
    if not 0 < t.decode_helper_timeout_s <= 600:
        raise bad(
            "transformer.decode_helper_timeout_s",
            t.decode_helper_timeout_s,
            "must be > 0 and <= 600",
        )
    if not 0 <= t.decode_helper_timeout_per_day_s <= 1:
        raise bad(
            "transformer.decode_helper_timeout_per_day_s",
            t.decode_helper_timeout_per_day_s,
            "must be >= 0 and <= 1",
        )
    import barstream.shared.timeframe as timeframe  # local: avoids an import cycle at module load

    for i, tf in enumerate(cfg.resampler.timeframes):
        try:
            timeframe.Timeframe.parse(tf)
        except ConfigError as e:  # its own "key = value: why": keep only the why
            raise bad(f"resampler.timeframes[{i}]", tf, str(e.args[0]).split(": ", 1)[-1]) from None
        except ValueError as e:
            raise bad(f"resampler.timeframes[{i}]", tf, str(e)) from None
    for sym, sessions in cfg.resampler.sessions.items():
        for i, sess in enumerate(sessions):
            key = f"resampler.sessions.{sym}[{i}]"
            for part in ("start", "end"):
                value = getattr(sess, part)
                if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
                    raise bad(f"{key}.{part}", value, "must be HH:MM (24h)")
            try:
                import zoneinfo

                zoneinfo.ZoneInfo(sess.timezone)
            except Exception:
                raise bad(f"{key}.timezone", sess.timezone, "not an IANA timezone") from None
            for j, wd in enumerate(sess.weekdays):
                if not 0 <= wd <= 6:
                    raise bad(f"{key}.weekdays[{j}]", wd, "weekdays are 0 (Monday) … 6 (Sunday)")
    if cfg.gateway.publish_hwm < 1:
        raise bad("gateway.publish_hwm", cfg.gateway.publish_hwm, "must be >= 1")
    if cfg.gateway.max_request_records < 1:
        raise bad("gateway.max_request_records", cfg.gateway.max_request_records, "must be >= 1")
    a = cfg.api
    if not 0 <= a.port <= MAX_PORT:
        raise bad("api.port", a.port, "must be a TCP port (0: any free port)")
    for key in ("max_records", "gateway_connections", "max_streams"):
        if getattr(a, key) < 1:
            raise bad(f"api.{key}", getattr(a, key), "must be >= 1")
    for key in ("keepalive_s", "header_timeout_s", "send_timeout_s"):
        if getattr(a, key) <= 0:
            raise bad(f"api.{key}", getattr(a, key), "must be > 0")
    for name in SERVICES:
        port = cfg.endpoints(name).metrics_port
        if port is None or not 0 <= port <= MAX_PORT:
            raise bad(f"{section(name)}.endpoints.metrics_port", port, "must be a TCP port")
    if not 0 <= cfg.fake_upstream.port <= MAX_PORT:
        raise bad("fake_upstream.port", cfg.fake_upstream.port, "must be a TCP port")
    if p.port_offset < 0:
        raise bad("pipeline.port_offset", p.port_offset, "must be >= 0")
    _check_features(cfg, bad)


def _check_features(cfg: Config, bad: Any) -> None:
    """``[[features]]``: unique names, timeframes the pipeline makes, indicators as
    services/features/spec.py defines them (its errors prefixed with ``features[i].``)."""
    # local imports: the catalogue of indicator kinds lives with the features stage
    from barstream.services.features.spec import SpecError, feature_set
    from barstream.shared.timeframe import Timeframe

    made = {Timeframe.parse("1m")} | {Timeframe.parse(t) for t in cfg.resampler.timeframes}
    seen: dict[str, int] = {}
    for i, fs in enumerate(cfg.features):
        key = f"features[{i}]"
        if fs.name in seen:
            raise bad(f"{key}.name", fs.name, f"repeats features[{seen[fs.name]}].name")
        seen[fs.name] = i
        if not fs.timeframes:
            raise bad(f"{key}.timeframes", fs.timeframes, "list at least one timeframe")
        for j, tf in enumerate(fs.timeframes):
            try:
                parsed = Timeframe.parse(tf)
            except (ConfigError, ValueError):
                raise bad(
                    f"{key}.timeframes[{j}]", tf, "not a timeframe (1m, 5m, 1h, 1d...)"
                ) from None
            if parsed not in made:
                why = "not made by the pipeline: 1m or one of resampler.timeframes"
                raise bad(f"{key}.timeframes[{j}]", tf, why)
        try:
            feature_set(
                fs.name,
                fs.timeframes,
                [{"kind": x.kind, "params": x.params, "name": x.name} for x in fs.indicators],
            )
        except SpecError as e:
            raise bad(f"{key}.{e.key}", e.value, e.why) from None


# -- TCP ports: the offset and the list of listening ports ---------------------------------

MAX_PORT: Final = 65535


def offset_port(port: int, offset: int) -> int:
    """``port`` shifted by ``offset``; 0 (any free port) stays 0."""
    return port + offset if port else 0


def _address_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``tcp://HOST:PORT`` address; None for ipc://, ``*`` or ``!`` ports."""
    scheme, sep, rest = address.partition("://")
    if scheme != "tcp" or not sep or ":" not in rest:
        return None
    host, port = rest.rsplit(":", 1)
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def _shift_address(address: str, offset: int) -> str:
    hp = _address_port(address)
    if hp is None or hp[1] == 0:
        return address
    head = address.rsplit(":", 1)[0]
    return f"{head}:{hp[1] + offset}"


def _shift_url(url: str, old: int, offset: int) -> str:
    """``url`` with its port moved by ``offset`` when it is ``old`` (the fake upstream's)."""
    parts = urllib.parse.urlsplit(url)
    if parts.port != old or not old:
        return url
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{old + offset}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _apply_port_offset(cfg: Config) -> None:
    """Shift every TCP port of ``cfg`` by ``pipeline.port_offset`` (after the defaults are
    filled, so defaults and configured ports move together); a port pushed past 65535 is an
    error naming ``pipeline.port_offset`` and the key it moved."""
    n = cfg.pipeline.port_offset
    if not n:
        return
    fake = cfg.fake_upstream
    cfg.downloader.base_url = _shift_url(cfg.downloader.base_url, fake.port, n)
    fake.port = offset_port(fake.port, n)
    for name in SERVICES:
        ep = cfg.endpoints(name)
        ep.feed = _shift_address(ep.feed, n)
        ep.upstream = _shift_address(ep.upstream, n)
        ep.metrics_port = offset_port(ep.metrics_port or 0, n)
    cfg.gateway.publish = _shift_address(cfg.gateway.publish, n)
    cfg.gateway.requests = _shift_address(cfg.gateway.requests, n)
    cfg.gateway.features_upstream = _shift_address(cfg.gateway.features_upstream, n)
    if cfg.api.port:
        cfg.api.port = offset_port(cfg.api.port, n)
    cfg.api.gateway_publish = _shift_address(cfg.api.gateway_publish, n)
    cfg.api.gateway_requests = _shift_address(cfg.api.gateway_requests, n)
    connects = [
        (f"{section(name)}.endpoints.upstream", _address_port(cfg.endpoints(name).upstream))
        for name in SERVICES
    ] + [("gateway.features_upstream", _address_port(cfg.gateway.features_upstream))]
    ports = [(x.key, x.port) for x in tcp_listens(cfg)] + [
        (key, hp[1]) for key, hp in connects if hp is not None
    ]
    for key, port in ports:
        if port > MAX_PORT:
            raise ConfigError(
                "pipeline.port_offset",
                n,
                f"moves {key} to port {port}, past {MAX_PORT}",
                path=cfg.source,
            )


@dataclass(frozen=True, slots=True)
class Listen:
    """One TCP port a run listens on: the configuration key that sets it, host and port."""

    key: str
    host: str
    port: int
    #: The configured value as the key holds it (an address, or the port).
    value: str | int


def tcp_listens(cfg: Config, *, fake: bool = True) -> list[Listen]:
    """Every TCP port ``cfg`` makes the services (and, with ``fake``, the fake upstream)
    listen on, offset included; ipc:// endpoints and any-free ports (0, ``*``) are left out."""
    out: list[Listen] = []
    for name in SERVICES:
        ep = cfg.endpoints(name)
        hp = _address_port(ep.feed)
        if hp is not None and hp[1]:
            out.append(Listen(f"{section(name)}.endpoints.feed", hp[0], hp[1], ep.feed))
        if ep.metrics_port:
            key = f"{section(name)}.endpoints.metrics_port"
            out.append(Listen(key, ep.metrics_host, ep.metrics_port, ep.metrics_port))
    for key, address in (
        ("gateway.publish", cfg.gateway.publish),
        ("gateway.requests", cfg.gateway.requests),
    ):
        hp = _address_port(address)
        if hp is not None and hp[1]:
            out.append(Listen(key, hp[0], hp[1], address))
    if cfg.api.port:
        out.append(Listen("api.port", cfg.api.host, cfg.api.port, cfg.api.port))
    if fake and cfg.fake_upstream.port:
        port = cfg.fake_upstream.port
        out.append(Listen("fake_upstream.port", cfg.pipeline.host, port, port))
    return out


def _lookup(data: Any, path: str) -> object:
    """The value at a msgspec error path like ``$.downloader.timeout_s`` or ``$.a[3]``."""
    cur = data
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        name, idx = part
        try:
            cur = cur[int(idx)] if idx else cur[name]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return cur


def from_dict(data: dict[str, Any], *, source: str = "") -> Config:
    """Build and validate a Config from parsed TOML / a dict."""
    try:
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as e:
        text = str(e)
        m = re.search(r" - at `\$(.*)`$", text)
        path = m.group(1) if m else ""
        key = path.lstrip(".") or "<root>"
        why = text[: m.start()] if m else text
        if why.startswith("Object contains unknown field"):
            field = re.search(r"`(.*?)`", why)
            key = (
                f"{key}.{field.group(1)}"
                if field and key != "<root>"
                else (field.group(1) if field else key)
            )
            raise ConfigError(
                key, "<unknown key>", "not a configuration key (typo?)", path=source
            ) from None
        raise ConfigError(key, _lookup(data, "$" + path), why, path=source) from None
    cfg.source = source
    if cfg.pipeline.symbols_file:
        listed = "symbols" in (data.get("pipeline") or {})
        from_file = read_symbols_file(cfg.pipeline.symbols_file, source)
        cfg.pipeline.symbols = (cfg.pipeline.symbols if listed else []) + [
            s for s in from_file if not listed or s not in cfg.pipeline.symbols
        ]
    _fill_defaults(cfg)
    _check(cfg)
    _apply_port_offset(cfg)
    return cfg


def read_symbols_file(name: str, source: str = "") -> list[str]:
    """The symbols of a file in the original project's format: an optional ``symbol``
    header, then one symbol a line as ``EUR/USD`` (or ``EUR-USD``); blank lines and ``#``
    comments are skipped. ``name`` is relative to the configuration file ``source``."""
    path = Path(name)
    if not path.is_absolute() and source:
        path = Path(source).parent / path
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(
            "pipeline.symbols_file", str(path), f"cannot read it: {e.strerror}", path=source
        ) from None
    out: list[str] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not text or (not out and text.lower() == "symbol"):
            continue
        symbol = text.replace("/", "-")
        if not _SYMBOL.match(symbol):
            raise ConfigError(
                "pipeline.symbols_file",
                f"{path}:{n}",
                f"{text!r} is not a symbol (EUR/USD, XAU/USD, DEU.IDX/EUR)",
                path=source,
            )
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise ConfigError("pipeline.symbols_file", str(path), "lists no symbol", path=source)
    return out


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("<file>", str(path), "configuration file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("<file>", str(path), f"not valid TOML: {e}") from None
    return from_dict(data, source=str(path))


def default() -> Config:
    return from_dict({})
