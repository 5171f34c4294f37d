"""The HTTP API (``barstream serve``): a starlette app over the gateway's sockets.

It never opens another service's files: bars, topics and the gateway's status come through
the gateway's request socket (a bounded pool of connections, ``pool.py``), live bars
through its publish socket (``live.py``), the other services' state from their /metrics
endpoints — so the API can run on another host than the pipeline.

Routes (docs/PROTOCOL.md "HTTP API"; the OpenAPI document is ``GET /openapi.json``):
``/healthz`` (200 while the gateway answers; with the pipeline's ``health`` and the
``unhealthy`` services' reasons, as ``barstream status``), ``/v1/topics``, ``/v1/status``, ``/v1/bars/{symbol}/{side}/{timeframe}``,
``/v1/stream/{symbol}/{side}/{timeframe}`` (Server-Sent Events; both with ``features=SET``:
the bars joined with a feature set's outputs), ``/metrics``, and the
chart page (``/``, ``/static/…``). Every error is JSON ``{"error", "message"}`` with a
status that says what was wrong.

``/v1/bars`` bodies: an answer of one gateway page is encoded before the response starts
and sent with its Content-Length (the gateway connection is free again before the client
reads); a longer one is streamed chunked, page by page, the next page fetched while the
current one is sent — either way in ``SEND_CHUNK`` slices.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import exposition as prom_exposition
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from barstream import status as pipeline_status
from barstream.services.api import formats, history, live, openapi, params, web
from barstream.services.api.pool import Pool
from barstream.shared.config import Config
from barstream.shared.errors import ApiError, GatewayError

log = logging.getLogger("barstream.api")

#: Bytes of a response body handed to the server at a time.
SEND_CHUNK: Final = 1 << 20
#: /healthz scrapes the services' health at most this often.
HEALTH_TTL_S: Final = 2.0


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "barstream_api_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.seconds = Histogram(
            "barstream_api_request_seconds",
            "Time to the first byte of a response",
            ["route"],
            registry=r,
        )
        self.bars = Counter("barstream_api_bars_sent", "Bars sent in /v1/bars bodies", registry=r)
        self.streams = Gauge("barstream_api_live_streams", "SSE streams open", registry=r)
        self.events = Counter("barstream_api_live_events", "SSE events sent", registry=r)


class Api:
    """What the routes share: the configuration, the gateway pool, the metrics."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = ApiMetrics()
        self.publish = cfg.api.gateway_publish
        self.requests = cfg.api.gateway_requests
        self._pool: Pool | None = None
        self.live_streams = 0
        self._health: tuple[float, str, dict[str, list[str]]] | None = None
        self._health_lock = anyio.Lock()

    async def pipeline_health(self) -> tuple[str, dict[str, list[str]]]:
        """The pipeline's health (``barstream status``'s model: the worst state, and the
        services not healthy with their reasons) from every /metrics endpoint, scraped at
        most once per ``HEALTH_TTL_S`` however many requests ask."""
        async with self._health_lock:
            now = time.monotonic()
            if self._health is None or now - self._health[0] >= HEALTH_TTL_S:
                got = await anyio.to_thread.run_sync(
                    lambda: pipeline_status.collect_remote(self.cfg)
                )
                unhealthy = {s.name: s.reasons for s in got if s.health != "healthy"}
                self._health = (now, pipeline_status.overall_health(got), unhealthy)
            return self._health[1], self._health[2]

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.publish, self.requests, self.cfg.api.gateway_connections)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _gateway_down(api: Api, e: Exception) -> ApiError:
    return ApiError(
        503,
        "gateway-unavailable",
        f"the gateway at {api.requests} did not answer ({e}); is it running? "
        "(`barstream status`, `barstream ctl start gateway`)",
    )


def _refused(e: GatewayError) -> ApiError:
    status = {"unknown-topic": 404, "too-large": 413}.get(e.code, 422)
    return ApiError(status, e.code, e.reason)


@contextlib.asynccontextmanager
async def _gateway(api: Api) -> AsyncIterator[Any]:
    """A pooled gateway connection; its failures become the API's 503 / 4xx."""
    try:
        async with api.pool.client() as gw:
            yield gw
    except GatewayError as e:
        raise _refused(e) from None
    except TimeoutError as e:
        raise _gateway_down(api, e) from None


def _outputs(series: history.Series) -> tuple[str, ...]:
    """The feature outputs a series' rows carry; 422 when one is named as a bar column."""
    clash = formats.clashes(series.outputs)
    if clash:
        raise ApiError(
            422,
            "feature-column-clash",
            f"{series.topic}: output(s) {', '.join(clash)} are named as bar columns; give "
            "the indicator another name in the [[features]] set",
        )
    return series.outputs


async def _slices(chunks: list[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    """``chunks`` in slices of at most SEND_CHUNK bytes: the server copies each slice into
    its framing, and a slice at a time stays in cache (one 30 MB copy costs ~3x more)."""
    for chunk in chunks:
        data = memoryview(chunk)
        for i in range(0, len(data), SEND_CHUNK):
            yield data[i : i + SEND_CHUNK]


def create_app(cfg: Config) -> Starlette:
    api = Api(cfg)

    def route(name: str, fn: Any) -> Any:
        async def handler(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                response: Response = await fn(request)
            except ApiError as e:
                response = _error(e.status, e.code, str(e), **e.extra)
            except Exception:
                log.exception("api: %s %s failed", request.method, request.url.path)
                response = _error(500, "internal", "the API failed; see its log")
            api.metrics.requests.labels(name, str(response.status_code)).inc()
            api.metrics.seconds.labels(name).observe(time.perf_counter() - t0)
            return response

        return handler

    async def healthz(request: Request) -> Response:
        try:
            async with _gateway(api) as gw:
                st = await gw.status()
        except ApiError as e:
            state, unhealthy = await api.pipeline_health()
            return _error(503, e.code, str(e), ok=False, health=state, unhealthy=unhealthy)
        state, unhealthy = await api.pipeline_health()
        return JSONResponse(
            {
                "ok": True,
                "gateway": st.instance,
                "upstream_age_s": st.upstream_age_s,
                "health": state,
                "unhealthy": unhealthy,
            }
        )

    async def topics(request: Request) -> Response:
        params.unknown(request.query_params, frozenset({"prefix"}))
        prefix = request.query_params.get("prefix", "")[: params.MAX_PARAM_CHARS]
        async with _gateway(api) as gw:
            listing = await gw.list_topics(prefix)
        out = []
        for t in listing:
            # a feature topic SYMBOL/SIDE/TF.SET: its bars' timeframe, and its set (features)
            symbol, side, tf = t.topic.split("/")
            out.append(
                {"topic": t.topic, "symbol": symbol, "side": side, "timeframe": tf.split(".")[0]}
                | msgspec.to_builtins(t)
            )
        return JSONResponse({"topics": out})

    async def status(request: Request) -> Response:
        params.unknown(request.query_params, frozenset())
        gateway: dict[str, Any] | None
        try:
            async with _gateway(api) as gw:
                gateway = msgspec.to_builtins(await gw.status())
        except ApiError as e:
            gateway = {"error": str(e)}
        statuses = await anyio.to_thread.run_sync(lambda: pipeline_status.collect_remote(api.cfg))
        return JSONResponse(pipeline_status.as_json(statuses) | {"gateway": gateway})

    async def bars(request: Request) -> Response:
        ref = params.topic_ref(cfg, **request.path_params)
        q = params.bars_query(cfg, ref, request.query_params, request.headers.get("accept", ""))
        suffix = {"mt4": "csv", "ndjson": "ndjson", "arrow": "arrow"}.get(q.fmt, q.fmt)
        tf_set = ref.timeframe if q.features is None else f"{ref.timeframe}.{q.features}"
        name = f"{ref.symbol}_{ref.side}_{tf_set}.{suffix}"
        headers = {"X-Barstream-Topic": q.topic}
        if q.fmt in ("csv", "mt4", "parquet", "arrow"):
            headers["Content-Disposition"] = f'inline; filename="{name}"'
        gw_cm = _gateway(api)
        gw = await gw_cm.__aenter__()
        try:
            series, info = await history.series_of(gw, ref, q.features)
            enc = formats.Encoder(q.fmt, q.topic, q.tz, q.week_label, _outputs(series))
            history.bound(q, info, cfg.api.max_records, series)
            source = history.pages(gw, q, info, series)
            first = await anext(source, None)
            second = None if first is None else await anext(source, None)
            whole: list[bytes | memoryview] | None = None
            if second is None:  # one gateway page (or none): the whole body is known now
                whole = [enc.start()]
                if first is not None:
                    whole.append(await anyio.to_thread.run_sync(enc.page, first))
                whole.append(enc.end())
        except BaseException as e:
            await gw_cm.__aexit__(type(e), e, e.__traceback__)
            raise
        if whole is not None:
            # Sent with its length (no chunked framing to write and parse), and the
            # gateway connection goes back to the pool before the client reads a byte.
            await gw_cm.__aexit__(None, None, None)
            api.metrics.bars.inc(0 if first is None else len(first))
            headers["Content-Length"] = str(sum(len(c) for c in whole))
            return StreamingResponse(_slices(whole), media_type=enc.media_type, headers=headers)

        async def body() -> AsyncIterator[bytes | memoryview]:
            try:
                yield enc.start()
                page = first
                queued = second
                while page is not None:
                    async for piece in _slices([await anyio.to_thread.run_sync(enc.page, page)]):
                        yield piece
                    api.metrics.bars.inc(len(page))
                    page, queued = queued, await anext(source, None) if queued is not None else None
                yield enc.end()
            except BaseException as e:
                # Mid-body failure: the connection is cut (no silent short answer).
                await gw_cm.__aexit__(type(e), e, e.__traceback__)
                raise
            else:
                await gw_cm.__aexit__(None, None, None)

        return StreamingResponse(body(), media_type=enc.media_type, headers=headers)

    async def stream(request: Request) -> Response:
        ref = params.topic_ref(cfg, **request.path_params)
        q = params.stream_query(cfg, ref, request.query_params)
        resume = live.resume_position(request.headers.get("last-event-id"))
        if api.live_streams >= cfg.api.max_streams:
            raise ApiError(
                503,
                "too-many-streams",
                f"{api.live_streams} live streams are open, the most api.max_streams allows; "
                "retry later",
            )
        series = None
        if q.features is not None:
            async with _gateway(api) as gw:
                series, _ = await history.series_of(gw, ref, q.features)
            _outputs(series)
            # the first event is one snapshot of (history + 1) bars' records
            most = cfg.gateway.max_request_records // series.stride - 1
            if q.history > most:
                raise ApiError(
                    413,
                    "over-limit",
                    f"history={q.history} is over the limit of {most} bars of {q.topic} "
                    f"per stream (gateway.max_request_records records, {series.stride} a bar)",
                    limit=most,
                )
        return live.response(api, q, resume, series)

    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(api.metrics.registry), media_type=prom_exposition.CONTENT_TYPE_LATEST
        )

    async def openapi_doc(request: Request) -> Response:
        return JSONResponse(openapi.document(cfg))

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        text = (
            f"no route {request.url.path[:200]!r}; see GET /openapi.json"
            if exc.status_code == 404
            else str(exc.detail)
        )
        api.metrics.requests.labels("other", str(exc.status_code)).inc()
        return _error(exc.status_code, code, text)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info(
            "api: serving on http://%s:%d (gateway %s)", cfg.api.host, cfg.api.port, api.requests
        )
        try:
            yield
        finally:
            api.close()

    routes: list[Route | Mount] = [
        Route("/healthz", route("healthz", healthz)),
        Route("/v1/topics", route("topics", topics)),
        Route("/v1/status", route("status", status)),
        Route("/v1/bars/{symbol}/{side}/{timeframe}", route("bars", bars)),
        Route("/v1/stream/{symbol}/{side}/{timeframe}", route("stream", stream)),
        Route("/metrics", route("metrics", metrics)),
        Route("/openapi.json", route("openapi", openapi_doc)),
        *web.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: not_found},
    )
    app.state.api = api
    return app
