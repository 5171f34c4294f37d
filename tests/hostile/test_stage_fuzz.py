"""Each stage's batch handler (the one its FeedClient calls) fed seeded random records — random
bytes, random journal kinds and bodies, plausible times with garbage prices, starts past the
end: nothing escapes (an escape would exit the service, and the same batch would come back
after the restart) and every bar store keeps its invariants (times strictly increasing,
finite prices)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from barstream.services.aggregator.service import Aggregator
from barstream.services.gateway.service import Gateway
from barstream.services.resampler.service import Resampler
from barstream.services.transformer.service import Transformer
from barstream.shared import protocol as p
from barstream.shared.config import from_dict
from barstream.shared.inbound import bars_problem
from barstream.shared.record import JOURNAL_DTYPE, KIND_BARS, KIND_JOURNAL, RECORD_DTYPE
from barstream.shared.service import Service
from tests.hostile.fuzz import seed_from_env

DAY_MS = 86_400_000
T0 = 1_700_000_000_000

STAGES = {
    "transformer": (Transformer, "fetch", JOURNAL_DTYPE, KIND_JOURNAL),
    "aggregator": (Aggregator, "days", RECORD_DTYPE, KIND_BARS),
    "resampler": (Resampler, "1m", RECORD_DTYPE, KIND_BARS),
    "gateway": (Gateway, "1m", RECORD_DTYPE, KIND_BARS),
}
BODY = b'{"timestamp": 1, "multiplier": 0.00001, "open": [1], "times": [], "opens": []}'


@pytest.mark.parametrize("stage", list(STAGES))
def test_random_records_never_escape_a_stage(stage: str, tmp_path: Path) -> None:
    cls, kind_name, dtype, kind = STAGES[stage]
    seed = seed_from_env()
    print(f"stage fuzz seed {seed} (BARSTREAM_TEST_SEED={seed} repeats it)")
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    cfg = from_dict(
        {
            "pipeline": {"data_dir": str(tmp_path / "data"), "commit_interval_s": 60},
            "gateway": {"publish": f"ipc://{tmp_path}/p", "requests": f"ipc://{tmp_path}/r"},
        }
    )
    service: Service = cls(cfg, serve_metrics=False)
    try:
        client = service.follow_upstream()
        stream = f"EUR-USD/BID/{kind_name}"
        for _ in range(300):
            n = r.choice([1, 2, 5, 30])
            recs = np.frombuffer(rng.bytes(64 * n), dtype=dtype).copy()
            if r.random() < 0.5:  # plausible times, garbage elsewhere
                if kind == KIND_BARS:
                    minutes = np.sort(rng.integers(0, 10**6, n))
                    recs["ts_ms"] = T0 // 60_000 * 60_000 + minutes * 60_000
                else:
                    recs["ts_ms"] = (T0 // DAY_MS + np.arange(n)) * DAY_MS
            if kind == KIND_JOURNAL and r.random() < 0.7:
                recs["kind"] = rng.integers(0, 4, n)
            bodies = [rng.bytes(r.randint(0, 200)) if r.random() < 0.5 else BODY for _ in range(n)]
            start = r.choice([0, 0, 1, 3, 10**6])
            batch = p.Batch(
                conn=1,
                stream=stream,
                store_id="ab" * 16,
                generation=0,
                start=start,
                count=n,
                end=start + n,
                kind=kind,
                attachments=n if kind == KIND_JOURNAL else 0,
            )
            asyncio.run(client.handler(batch, recs, bodies if kind == KIND_JOURNAL else []))
        for key, store in service.stores.stores.items():
            if store.meta.kind == KIND_BARS and store.length:
                recs = store.view(0, store.length)
                assert bars_problem(recs[:0], recs, ordered=stage != "transformer") is None, key
    finally:
        service.stores.close()
        service.ctx.destroy(linger=0)
        helper = getattr(service, "helper", None)
        if helper is not None:
            helper.close()
