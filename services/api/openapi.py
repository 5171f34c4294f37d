"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), written from the same
constants the routes check (formats, parameters, limits), and tested against the routes
and the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from barstream.services.api import formats, params
from barstream.shared.config import Config


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _topic_params(cfg: Config) -> list[dict[str, Any]]:
    return [
        {
            "name": "symbol",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": list(cfg.pipeline.symbols)},
        },
        {
            "name": "side",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": list(cfg.pipeline.sides)},
        },
        {
            "name": "timeframe",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": params.timeframes(cfg)},
        },
    ]


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_FEATURES = {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": params.MAX_PARAM_CHARS}
_FEATURES_DOC = (
    "a feature set ([[features]] name, e.g. core): the bars joined with the set's outputs "
    "(topic SYMBOL/SIDE/TF.SET) — an extra column per output, named as the output "
    "(rsi_14.value, sma_20), in the set's order: json/ndjson a key per output after "
    "provisional, null while warming up (NaN); csv a column per output after provisional, "
    "nan while warming up; arrow/parquet a float64 column per output after flags, NaN "
    "while warming up; not with format=mt4 (400). limit, start/end, provisional and "
    "api.max_records count bars, as without features. A set the gateway does not serve "
    "for this topic: 404 naming the sets it serves; not a set name: 400"
)
_TIME = {"type": "string", "examples": ["2019-01-02", "2019-01-02T10:30:00Z", "1546300800000"]}
_ERRORS = {
    "404": _error("unknown symbol, side or timeframe, or a feature set the gateway does not serve"),
    "422": _error("a parameter is not valid (bad date, unknown parameter …)"),
    "503": _error("the gateway does not answer"),
}


def document(cfg: Config) -> dict[str, Any]:
    bar = {
        "type": "object",
        "required": [
            "ts_ms",
            "time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "flags",
            "provisional",
        ],
        "properties": {
            "ts_ms": {"type": "integer", "description": "bar open, ms since the epoch (UTC)"},
            "time": {"type": "string", "description": "bar open, ISO 8601 in the tz asked"},
            **{k: {"type": "number"} for k in ("open", "high", "low", "close", "volume")},
            "flags": {"type": "integer", "description": "FLAG_* bits (docs/FORMAT.md)"},
            "provisional": {"type": "boolean", "description": "the bar may still change"},
        },
        "additionalProperties": {
            "type": ["number", "null"],
            "description": "features=SET: one key per output of the set (null: warming up)",
        },
    }
    bars_content = {
        media: {"schema": {"$ref": "#/components/schemas/Bars"}}
        if fmt == "json"
        else {"schema": {"type": "string", "format": "binary"}}
        for fmt, media in formats.MEDIA_TYPES.items()
        if fmt != "mt4"
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "barstream HTTP API",
            "version": "1",
            "description": "Bars of the barstream gateway: history in several formats, live "
            "bars as Server-Sent Events, topics and status. See docs/PROTOCOL.md.",
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Is the gateway answering? With the pipeline's health "
                    "(healthy, degraded, failed) and the reasons of each service not healthy",
                    "responses": {"200": {"description": "ok"}, "503": _error("gateway down")},
                }
            },
            "/v1/topics": {
                "get": {
                    "summary": "Topics the gateway serves",
                    "parameters": [_query("prefix", {"type": "string"}, "topic prefix")],
                    "responses": {
                        "200": {
                            "description": "topics",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Topics"}
                                }
                            },
                        },
                        **_ERRORS,
                    },
                }
            },
            "/v1/status": {
                "get": {
                    "summary": "What `barstream status --json` shows, plus the gateway's status",
                    "responses": {"200": {"description": "status"}},
                }
            },
            "/v1/bars/{symbol}/{side}/{timeframe}": {
                "get": {
                    "summary": "Bars of a topic (oldest first), streamed",
                    "parameters": [
                        *_topic_params(cfg),
                        _query("start", _TIME, "first bar open >= start (UTC unless an offset)"),
                        _query("end", _TIME, "bar opens < end"),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 0, "maximum": cfg.api.max_records},
                            "with start: the first N bars from it; else the last N before end",
                        ),
                        _query(
                            "provisional",
                            {"type": "boolean", "default": True},
                            "include the open (still changing) bar",
                        ),
                        _query(
                            "tz",
                            {"type": "string", "default": "UTC"},
                            "IANA zone of the text time labels",
                        ),
                        _query(
                            "format",
                            {"type": "string", "enum": list(formats.FORMATS)},
                            "else chosen from the Accept header (json by default)",
                        ),
                        _query(
                            "allow_utc",
                            {"type": "boolean", "default": False},
                            "mt4: write a utc-aligned store's 4h/1d/1W/… bars anyway",
                        ),
                        _query(
                            "week_label",
                            {"type": "string", "enum": ["monday", "sunday"], "default": "monday"},
                            "mt4: label 1W bars with their Monday or the Sunday before",
                        ),
                        _query("features", _FEATURES, _FEATURES_DOC),
                    ],
                    "responses": {
                        "200": {"description": "bars", "content": bars_content},
                        "400": _error("features= is not a set name, or with format=mt4"),
                        "406": _error("a format we do not write"),
                        "413": _error(f"more than api.max_records ({cfg.api.max_records}) bars"),
                        **_ERRORS,
                    },
                }
            },
            "/v1/stream/{symbol}/{side}/{timeframe}": {
                "get": {
                    "summary": "Live bars as Server-Sent Events (resume with Last-Event-ID)",
                    "parameters": [
                        *_topic_params(cfg),
                        _query(
                            "history",
                            {"type": "integer", "minimum": 0, "default": 0},
                            "bars in the first event",
                        ),
                        _query(
                            "closed_only",
                            {"type": "boolean", "default": False},
                            "each closed bar once, no provisional bar",
                        ),
                        _query("tz", {"type": "string", "default": "UTC"}, "zone of time labels"),
                        _query(
                            "features",
                            _FEATURES,
                            "a feature set: each event's bars joined with the set's outputs "
                            "(a key per output, null while warming up); start_offset, "
                            "replaces and history in bars; the id is the position in the "
                            "feature topic's records (resumable as for bars). A set the "
                            "gateway does not serve: 404 naming those it serves; not a set "
                            "name: 400",
                        ),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "EPOCH.SEQ.END of the last event applied",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "events: `id: EPOCH.SEQ.END`, `event: bars`, "
                            "`data:` an Event",
                            "content": {
                                "text/event-stream": {
                                    "schema": {"$ref": "#/components/schemas/Event"}
                                }
                            },
                        },
                        "400": _error("features= is not a set name"),
                        "413": _error("history over the bars one snapshot holds"),
                        **_ERRORS,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of the API",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "the OpenAPI 3.1 document"}},
                }
            },
            "/": {
                "get": {
                    "summary": "The live chart page",
                    "responses": {
                        "200": {"description": "web/index.html", "content": {"text/html": {}}},
                        "404": _error("the chart page is not installed (`make web`)"),
                    },
                }
            },
            "/static/{path}": {
                "get": {
                    "summary": "The chart page's files and its charting library",
                    "parameters": [
                        {
                            "name": "path",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "a file of web/"},
                        "404": _error("no such file, or not installed (`make web`)"),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Bar": bar,
                "Bars": {
                    "type": "object",
                    "required": ["topic", "bars", "count"],
                    "properties": {
                        "topic": {"type": "string"},
                        "count": {"type": "integer"},
                        "bars": {"type": "array", "items": {"$ref": "#/components/schemas/Bar"}},
                    },
                },
                "Topics": {
                    "type": "object",
                    "properties": {
                        "topics": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    k: {"type": t}
                                    for k, t in (
                                        ("topic", "string"),
                                        ("symbol", "string"),
                                        ("side", "string"),
                                        ("timeframe", "string"),
                                        ("epoch", "string"),
                                        ("seq", "integer"),
                                        ("count", "integer"),
                                    )
                                }
                                | {
                                    "features": {
                                        "type": ["object", "null"],
                                        "description": "a feature topic (SYMBOL/SIDE/TF.SET, "
                                        "timeframe TF): its set — name, columns, outputs, "
                                        "groups, crc; count is records (1 + groups a bar); "
                                        "null for bars",
                                    }
                                },
                            },
                        }
                    },
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "topic": {"type": "string"},
                        "seq": {"type": "integer"},
                        "start_offset": {"type": "integer"},
                        "replaces": {"type": "integer"},
                        "kind": {
                            "type": "string",
                            "enum": ["history", "update", "resync", "reset"],
                        },
                        "bars": {"type": "array", "items": {"$ref": "#/components/schemas/Bar"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "limit": {"type": "integer"},
                    },
                },
            }
        },
    }
