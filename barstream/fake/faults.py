"""Fault injection: the twelve ways the fake upstream misbehaves, their spec and matching.

A :class:`Fault` applies to requests whose path and query match ``pattern`` (an fnmatch
glob, e.g. ``*/EUR-USD/*``), ``count`` more times (``None`` = always) or, given
``probability``, at those seeded odds. The first live fault that matches a request fires
(``revise`` aside: it is a standing state, asked with :meth:`FaultPlan.revised`). Kinds::

    429           status 429 with Retry-After: retry_after_s
    500 503 404   that status, body {"error":"injected"}
    slow          wait delay_s, then answer normally
    truncate      Content-Length says the whole body; half of it is sent, then close
    empty         status ``status`` (200) with an empty body
    invalid_json  status ``status`` with the first half of the real body
    html          status ``status`` with an HTML error page (a proxy in the way)
    reset         no answer: the connection is closed with a TCP RST
    revise        from then on the matching days are served revised (every price one
                  point higher; recorded days included)
    corrupt       status ``status`` with well-formed JSON whose bars are invalid
                  (highs and lows swapped, so high < low)

Spec text, as ``--fault`` and ``POST /_control/faults {"spec": …}`` take it::

    KIND[:GLOB[:count=N|p=P][:delay=S][:retry_after=S][:status=N]]
    503:*/EUR-USD/*:count=3      429:*:p=0.1      slow:*:count=inf:delay=5

``count=`` empty, ``inf`` or ``always`` means no limit; ``p=`` implies no count limit.
A bad kind, option or probability raises ValueError naming it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

import numpy as np

FAULT_KINDS: Final = (
    "429",
    "500",
    "503",
    "404",
    "slow",
    "truncate",
    "empty",
    "invalid_json",
    "html",
    "reset",
    "revise",
    "corrupt",
)
#: The ``html`` fault's body: what a proxy in front of the API answers when it fails.
HTML_PAGE: Final = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is temporarily unavailable.</p></body></html>"
)


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour for requests whose path+query matches ``pattern`` (a glob).
    Fires ``count`` more times (None = always) or with ``probability``."""

    kind: str
    pattern: str = "*"
    count: int | None = 1
    probability: float = 1.0
    delay_s: float = 2.0
    retry_after_s: int = 1
    status: int = 200  # of the empty/invalid_json/html/corrupt answers (truncate: counted)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind = {self.kind!r}: must be one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability = {self.probability!r}: must be in [0, 1]")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND[:PATTERN[:key=value...]]``, e.g. ``503:*/EUR-USD/*:count=3``."""
        kind, _, rest = spec.partition(":")
        pattern, *options = rest.split(":") if rest else ["*"]
        fault = cls(kind, pattern or "*")
        for option in options:
            key, _, value = option.partition("=")
            if key == "count":
                fault.count = None if value in ("", "inf", "always") else int(value)
            elif key in ("p", "probability"):
                fault.probability = float(value)
                fault.count = None
            elif key in ("delay", "delay_s"):
                fault.delay_s = float(value)
            elif key in ("retry_after", "retry_after_s"):
                fault.retry_after_s = int(value)
            elif key == "status":
                fault.status = int(value)
            else:
                raise ValueError(f"fault option {key!r} in {spec!r}: unknown")
        fault.validate()
        return fault


class FaultPlan:
    """The server's faults, in the order added; thread safe. The odds of a ``probability``
    fault come from one generator seeded with the server's seed, so a run replays."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def pick(self, target: str) -> Fault | None:
        """The first live non-revise fault matching ``target``, consuming one of its count."""
        with self._lock:
            for fault in self.faults:
                if fault.kind == "revise" or not fnmatchcase(target, fault.pattern):
                    continue
                if fault.count is not None and fault.count <= 0:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                return fault
            return None

    def revised(self, target: str) -> bool:
        with self._lock:
            return any(f.kind == "revise" and fnmatchcase(target, f.pattern) for f in self.faults)


def corrupt_candles(body: bytes) -> bytes:
    """Well-formed candle JSON whose bars break an invariant (highs and lows swapped, so
    high < low): what a broken upstream day looks like to the transformer."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict) and obj.get("highs"):
        obj["high"], obj["low"] = obj.get("low"), obj.get("high")
        obj["highs"], obj["lows"] = obj.get("lows"), obj.get("highs")
    return json.dumps(obj, separators=(",", ":")).encode()
