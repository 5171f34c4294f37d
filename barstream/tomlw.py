"""Write the TOML subset a barstream configuration uses (tables, arrays of tables, strings,
numbers, booleans, dates, arrays of scalars) — for configs the CLI derives (rebuild, tests).
``tomllib.loads(dumps(d)) == d`` for every such dict."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any


def dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    bare = k.replace("-", "").replace("_", "").isalnum() and k.isascii()
    return k if bare else json.dumps(k)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _table(lines: list[str], path: list[str], data: Mapping[str, Any]) -> None:
    nested: list[tuple[str, Any]] = []
    for k, v in data.items():
        if v is None:
            continue  # TOML has no null: an absent key means the default
        if isinstance(v, Mapping) or _is_table_array(v):
            nested.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_scalar(v)}")
    for k, v in nested:
        sub = [*path, _key(k)]
        if isinstance(v, Mapping):
            lines.append("")
            lines.append(f"[{'.'.join(sub)}]")
            _table(lines, sub, v)
        else:
            for item in v:
                lines.append("")
                lines.append(f"[[{'.'.join(sub)}]]")
                _table(lines, sub, item)
