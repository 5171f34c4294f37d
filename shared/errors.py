"""Typed errors. Each names where it happened (file, symbol, day, offset, key) in its
message *and* keeps those facts as attributes, so callers and metrics need not parse text.

    BarstreamError
    ├── StoreError
    │   ├── StoreCorrupt          a header or record that cannot be valid (file, offset)
    │   ├── StoreMismatch         a store holds something other than what was asked (file, key)
    │   ├── StoreRangeError       an offset or record range outside a store (file, start,
    │   │                         stop, length); also an IndexError
    │   ├── StoreClosed
    │   ├── StoreMissing          no store file where one was asked for (file, key): the
    │   │                         pipeline has not written it yet
    │   ├── StoreRewritten        a reader's scan found records it already handed out
    │   │                         rewritten by the writer (file, offset)
    │   └── StoreFileMissing      a store file the service's checkpoint names is gone (file)
    ├── CheckpointCorrupt         a checkpoint file that cannot be parsed (file)
    ├── ConfigError               a configuration value is invalid (key path, value)
    │   ├── BindError             a socket or port this host cannot bind (key, address; in use,
    │   │                         or not this host's)
    │   └── UnknownStore          a symbol, side, timeframe or service a query names that the
    │                             configuration or data directory does not have (key, value)
    ├── ProtocolError             a malformed or unexpected message on a socket (peer, reason)
    │   └── Malformed             a frame that is no valid message of its protocol, feed or
    │                             gateway (code, request_id)
    ├── GatewayError              the gateway refused a request (code, reason, endpoint):
    │                             raised by its query core, and by the client for the reply
    ├── UpstreamInvalid           well-framed upstream records a stage cannot take (stream, offset)
    │   └── RejectedName          a name off the wire this receiver does not take (reason;
    │                             shared/names.py)
    ├── SourceError               the upstream HTTP source failed (symbol, side, day, url)
    │   ├── NotFound              HTTP 404 / before the instrument's history start
    │   ├── HostUnresolved        the upstream's host name does not resolve (DNS): not retried
    │   └── TransientSourceError  429 / 5xx / timeout / connection error / refused body (retry)
    ├── PayloadInvalid            a response that failed decoding or validation
    │                             (symbol, side, day, field, index)
    ├── DiskFull                  a write found its file system full (file, bytes needed,
    │                             bytes free): the service stops, resumes when restarted
    ├── CommitFailed              a commit after one that failed: never retried in place
    ├── SupervisorError           supervisord could not be started, reached or stopped
    ├── RebuildError              a rebuild's drain run failed or did not finish (service)
    └── WebAssetsMissing          the chart page's files or its npm-installed charting
                                  library are not where they belong (path)


    ├── QueryError                a SQL query the engine refused (query, reason)
    └── RebuildError              a rebuild's drain run failed or did not finish (service)

Every error says what happened, where, and (via ``hint``) what to do.

The exit codes of every command and service are defined here too: ``EXIT_OK`` (done),
``EXIT_ERROR`` (an error: a service is restarted by supervisord; a command left something
undone, and said what), ``EXIT_USAGE`` (bad arguments or configuration) and
``EXIT_NEEDS_OPERATOR`` (a service found one of its *own* files — a store, its header, an
undo file, the checkpoint — damaged or missing: restarting cannot help, so it printed one
FATAL line naming the file, the offset and the repair command, and supervisord.conf lists
the code in ``exitcodes`` so the program is not restarted in a loop; ``needs_operator``
builds that line).
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NEEDS_OPERATOR: Final = 3


class BarstreamError(Exception):
    """Base of every barstream error."""

    hint: str = ""

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class StoreError(BarstreamError):
    """A store could not be used."""

    def __init__(self, path: str, message: str, *, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        where = f"{path}: record {offset}" if offset is not None else path
        super().__init__(f"{where}: {message}")


class StoreCorrupt(StoreError):
    hint = "run `barstream verify`; rebuild this service's stores with `barstream rebuild`"


class StoreMismatch(StoreError):
    hint = "the file belongs to another store; check data paths in the configuration"


class StoreRangeError(StoreError, IndexError):
    """An offset or record range ``[start, stop)`` asked of a store holding ``length`` records."""

    def __init__(
        self,
        path: str,
        start: int,
        stop: int,
        length: int,
        message: str = "",
        *,
        offset: int | None = None,
    ) -> None:
        self.start = start
        self.stop = stop
        self.length = length
        super().__init__(
            path,
            message or f"records [{start}, {stop}) outside the store's [0, {length})",
            offset=offset,
        )


class StoreClosed(StoreError):
    pass


class StoreMissing(StoreError):
    """No store file at ``path`` for the store ``key`` a reader asked for."""

    hint = (
        "the pipeline writes it: run it first (`barstream run`, or `barstream demo`), or "
        "point --config / --data-dir at the data directory that holds it"
    )

    def __init__(self, path: str, key: str) -> None:
        self.key = key
        super().__init__(path, f"no store file for {key}")


class StoreRewritten(StoreError):
    """A scan reading a store batch by batch (``barstream.frames``) found that the writer
    rewrote committed records from ``offset`` on, below what the scan had handed out."""

    hint = "a revision landed during the read: run the query again"


class CheckpointCorrupt(BarstreamError):
    hint = "restore it from a backup or delete it to rebuild the service's stores from upstream"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ConfigError(BarstreamError):
    hint = "fix the configuration file and start again"

    def __init__(self, key: str, value: object, message: str, *, path: str = "") -> None:
        self.key = key
        self.value = value
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{key} = {value!r}: {message}")


class UsageError(ConfigError):
    """A command-line argument (``key``, e.g. ``--day``) that cannot be right."""

    hint = "check the command's arguments (--help)"


class BindError(ConfigError):
    """A configured address this host cannot listen on: ``key`` names the configuration key
    that sets it, ``value`` its value (an address or a port); ``in_use``: another socket
    holds it (else the host is not this machine's, or two keys share the port)."""

    IN_USE_HINT = (
        "another barstream or program holds it: stop it, "
        "or run with --port-offset N, or set pipeline.port_offset"
    )

    def __init__(
        self, key: str, value: object, message: str, *, in_use: bool = False, path: str = ""
    ) -> None:
        self.in_use = in_use
        self.address = str(value)
        self.hint = (
            f"{self.IN_USE_HINT}, or set {key} to a free address"
            if in_use
            else f"fix the configuration file and start again: {key} must be an address "
            "this host can bind (tcp://HOST:PORT or ipc://PATH)"
        )
        super().__init__(key, value, message, path=path)


class UnknownStore(ConfigError):
    """A query names a ``key`` (``symbol``, ``side``, ``timeframe``, ``store``) with a
    ``value`` the configuration or data directory does not have; the message lists those
    that exist."""

    hint = "name one that exists"


class DrainIncomplete(BarstreamError):
    """Drain mode (rebuilds, tests): a downstream peer left before it had every record."""

    hint = "run it again (every stage resumes from its checkpoint); see that stage's log"


class ProtocolError(BarstreamError):
    """A malformed or unexpected message; ``reason`` is the message without the peer."""

    def __init__(self, message: str, *, peer: str = "") -> None:
        self.peer = peer
        self.reason = message
        super().__init__(f"{peer}: {message}" if peer else message)


class Malformed(ProtocolError):
    """A frame that is no valid message of its protocol (the feed's, shared/protocol.py, or
    the gateway's, shared/gateway_protocol.py). ``code`` is what a refusal answers (a
    gateway_protocol.ERROR_CODES entry; the feed answers "malformed"); ``request_id`` the
    gateway request it belongs to (0 when unknown)."""

    def __init__(self, message: str, *, code: str = "malformed", request_id: int = 0) -> None:
        self.code = code
        self.request_id = request_id
        super().__init__(message)


class GatewayError(BarstreamError):
    """The gateway refused a request: ``code`` is a gateway_protocol.ERROR_CODES entry,
    ``reason`` says what was wrong and what to do. The gateway's query core raises it (the
    reply carries code and reason); the client raises it for an error reply, with the
    ``endpoint`` that answered."""

    def __init__(self, code: str, reason: str, *, endpoint: str = "") -> None:
        self.code = code
        self.reason = reason
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: {code}: {reason}" if endpoint else f"{code}: {reason}")


class UpstreamInvalid(BarstreamError):
    """Records from the upstream feed that break the stage's contract (a stream name it
    does not serve, a day version that is not one UTC day of increasing minutes …): the
    batch is counted, logged and dropped; the service keeps running."""

    hint = "the upstream store is not what this stage expects: run `barstream verify` on it"

    def __init__(self, message: str, *, stream: str = "", offset: int | None = None) -> None:
        self.stream = stream
        self.offset = offset
        where = stream + (f" @ {offset}" if offset is not None else "")
        super().__init__(f"{where}: {message}" if where else message)


class SourceError(BarstreamError):
    """A fetch failed; ``reason`` is the message without the where (symbol/side/day, url)."""

    #: The upstream's clock (HTTP ``Date``) when it answered with this error, if known.
    server_ms: int | None = None

    def __init__(
        self, message: str, *, symbol: str = "", side: str = "", day: str = "", url: str = ""
    ) -> None:
        self.reason = message
        self.symbol = symbol
        self.side = side
        self.day = day
        self.url = url
        where = "/".join(p for p in (symbol, side, day) if p)
        super().__init__(f"{where}: {message}" + (f" [{url}]" if url else ""))


class NotFound(SourceError):
    hint = "check the symbol name and the configured start date against the instrument's history"


class HostUnresolved(SourceError):
    """The upstream's host name does not resolve (DNS): not retried, since every request to
    it would fail alike until the configuration or the network is fixed."""

    hint = "check downloader.base_url and this machine's DNS"


class TransientSourceError(SourceError):
    """A fetch that may succeed if tried again: raised for one failed attempt (``status``:
    the HTTP status, 0 if none; ``retry_after_s``: the server's ``Retry-After``), and when
    the attempts are used up."""

    hint = "will retry with backoff; a day still failing becomes a gap retried later"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        retry_after_s: float | None = None,
        symbol: str = "",
        side: str = "",
        day: str = "",
        url: str = "",
    ) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(message, symbol=symbol, side=side, day=day, url=url)


class PayloadInvalid(BarstreamError):
    hint = "nothing from this payload was stored; the symbol is held until a good payload arrives"

    def __init__(
        self,
        message: str,
        *,
        symbol: str = "",
        side: str = "",
        day: str = "",
        field: str = "",
        index: int | None = None,
    ) -> None:
        self.symbol = symbol
        self.side = side
        self.day = day
        self.field = field
        self.index = index
        where = "/".join(p for p in (symbol, side, day) if p)
        at = field + (f"[{index}]" if index is not None else "")
        super().__init__(f"{where}: {at}: {message}" if at else f"{where}: {message}")


class SupervisorError(BarstreamError):
    """supervisord could not be started, reached or stopped."""

    hint = "see the supervisord log under the run directory (barstream ctl / --var)"


class QueryError(BarstreamError):
    """The SQL engine refused or failed a ``query``: ``reason`` is the engine's message."""

    hint = "fix the query; `barstream sql --help` shows the bars() tables and their columns"

    def __init__(self, query: str, reason: str) -> None:
        self.query = query
        self.reason = reason
        super().__init__(f"{reason}\n  in query: {query}")


class RebuildError(BarstreamError):
    """A rebuild's drain run failed or did not finish."""

    hint = "see the rebuild log it names; fix the cause and run `barstream rebuild` again"


class ApiError(BarstreamError):
    """An HTTP API request that cannot be answered as asked: ``status`` is the HTTP status
    (404 unknown topic, 422 bad parameter, 413 range over the limit, 406 unknown format,
    503 gateway unavailable), ``code`` a short name, the message what was wrong and what to
    do. The API answers it as ``{"error": code, "message": …}``."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        self.status = status
        self.code = code
        self.extra = extra
        super().__init__(message)


class WebAssetsMissing(BarstreamError):
    """The chart page (web/) or the charting library npm installs into web/node_modules."""

    hint = "run `make web` in the checkout: npm ci installs what web/package-lock.json pins"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def own_file_damage(error: BaseException) -> bool:
    """``error`` says a service's own store, header, undo file or checkpoint is damaged or
    gone (``StoreCorrupt``, ``StoreMismatch``, ``CheckpointCorrupt``, ``StoreFileMissing``)."""
    return isinstance(error, StoreCorrupt | StoreMismatch | CheckpointCorrupt | StoreFileMissing)


class StoreFileMissing(StoreError):
    """A store file the service's checkpoint names is gone (deleted while the service ran,
    or since): the committed records in it are lost to this service."""

    hint = "rebuild this service's stores with `barstream rebuild`"


def needs_operator(service: str, error: BarstreamError, config: str = "") -> str:
    """The one FATAL line of an ``EXIT_NEEDS_OPERATOR`` exit: what is damaged (the error
    names the file and offset) and the commands that repair it."""
    cfg = f" --config {config}" if config else ""
    return (
        f"FATAL: {service} needs an operator, it will not be restarted: "
        f"{Exception.__str__(error)}. "
        f"Repair: `barstream verify{cfg}` lists every damaged file; "
        f"`barstream rebuild{cfg}` moves the stores aside and recomputes them from the raw "
        f"cache; then `barstream ctl start {service}` (exit code {EXIT_NEEDS_OPERATOR})"
    )


class DiskFull(BarstreamError):
    """A write to ``path`` found no space (ENOSPC / EDQUOT): ``need_bytes`` is what that
    write needed at least, ``free_bytes`` what its file system had left (for this user)."""

    hint = (
        "free space on that file system (or grow it); the service stops, nothing committed is "
        "lost, and it resumes from its last commit when started again (supervisord restarts "
        "it; once FATAL: `barstream ctl start SERVICE`)"
    )

    def __init__(self, path: str, need_bytes: int, free_bytes: int, what: str = "write") -> None:
        self.path = path
        self.need_bytes = need_bytes
        self.free_bytes = free_bytes
        super().__init__(
            f"{path}: disk full: {what} needs {need_bytes:,} bytes, "
            f"{free_bytes:,} bytes free on its file system"
        )


class CommitFailed(BarstreamError):
    """A commit asked for after one that failed (``cause``): the failed commit's flush may
    have lost written pages, and a second fsync could report success for them, so a commit
    is never retried in place (DESIGN §6): the service stops and resumes from its last
    checkpoint."""

    hint = "the service stops; restarted, it resumes from its last checkpoint"

    def __init__(self, path: str, cause: BaseException) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"{path}: an earlier commit failed ({cause}); not retried in place")
