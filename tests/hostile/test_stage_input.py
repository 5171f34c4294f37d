"""Upstream records a stage cannot compute with are a counted rejection of that batch,
never an exit (issue 16's crash loops: the same batch comes back after every restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from barstream.services.aggregator.service import Aggregator
from barstream.services.resampler.service import Resampler
from barstream.shared import protocol as p
from barstream.shared.config import from_dict
from barstream.shared.record import KIND_BARS
from barstream.shared.service import Service
from tests.hostile.support import bars


def batch(stream: str, start: int, count: int) -> p.Batch:
    return p.Batch(
        conn=1,
        stream=stream,
        store_id="ab" * 16,
        generation=0,
        start=start,
        count=count,
        end=start + count,
        kind=KIND_BARS,
    )


def value(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("cls", "kind"), [(Resampler, "1m"), (Aggregator, "days")])
def test_a_batch_the_stage_raises_on_is_rejected_and_the_next_one_goes_through(
    tmp_path: Path, cls: type[Service], kind: str
) -> None:
    cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / "data"), "commit_interval_s": 60}})
    service = cls(cfg, serve_metrics=False)
    try:
        client = service.follow_upstream()
        stream = f"EUR-USD/BID/{kind}"
        src = 0 if kind == "days" else None
        # from offset 10**6 on: past the end of what the stage holds (the stage raises)
        asyncio.run(client.handler(batch(stream, 10**6, 3), bars(3, src=src), []))
        rejected = value(
            service, "barstream_rejected_messages_total", socket="feed_client", reason="bad-records"
        )
        if cls is Resampler:  # the cascade refuses an update past the 1m replica's end
            assert rejected == 1
            assert value(service, "barstream_errors_total", kind="upstream_invalid") == 1
        asyncio.run(client.handler(batch(stream, 0, 3), bars(3, src=src), []))
        assert service.stores.stores["EUR-USD/BID/1m"].length == 3
    finally:
        service.stores.close()
        service.ctx.destroy(linger=0)
