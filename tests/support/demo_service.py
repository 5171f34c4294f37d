"""A small real Service for tests of the service shell (signals, commit on close, exit codes).

    python -m tests.support.demo_service {run|fail-barstream|fail-store|fail-os} --config FILE

``run``: append 7 records every 2 ms to EUR-USD/BID/1m, ``maybe_commit`` as data flows,
serve the store as a feed; prints ``running`` once started. ``fail-*``: ``main()`` raises
a BarstreamError / a StoreCorrupt (own-file damage) / an OSError after start.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from barstream.shared import service
from barstream.shared.errors import StoreCorrupt, StoreError
from barstream.shared.header import StoreMeta
from tests.support.plan import make_records


class Demo(service.Service):
    name = "aggregator"
    mode = "run"

    async def main(self) -> None:
        assert self.stopping is not None
        server = self.serve_feed()
        serving = asyncio.create_task(server.run())
        store = self.stores.ensure(StoreMeta("EUR-USD", "BID", "1m"))
        if self.mode == "fail-barstream":
            raise StoreError("demo.bars", "demo failure", offset=3)
        if self.mode == "fail-store":
            raise StoreCorrupt("demo.bars", "demo damage", offset=3)
        if self.mode == "fail-os":
            raise OSError(28, "No space left on device")
        print("running", flush=True)
        while not self.stopping.is_set():
            store.append(make_records(1, store.length, 0, store.length, 7))
            self.stores.touch(store.meta.key)
            self.maybe_commit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.002)
        server.close()
        await serving


if __name__ == "__main__":
    Demo.mode = sys.argv.pop(1)
    sys.exit(service.main(Demo))
