"""Child process of the crash test: follow the plan of ``tests.support.plan`` forever,
committing after every commit's operations and acknowledging each commit on stdout.

    python -m tests.support.crash_writer ROOT SEED [MAX_BATCH]

Prints ``ready <commits>`` once the StoreSet is open, then ``ack <c>`` after commit ``c``
returned. The parent kills it with SIGKILL at random moments.
"""

from __future__ import annotations

import sys

from barstream.shared.header import StoreMeta
from barstream.shared.storeset import StoreSet
from tests.support.plan import apply, ops_for

META = StoreMeta("EUR-USD", "BID", "1m")


def main() -> None:
    root, seed = sys.argv[1], int(sys.argv[2])
    max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    stores = StoreSet.open(root, "crash")
    store = stores.ensure(META)
    out = sys.stdout
    out.write(f"ready {stores.commits}\n")
    out.flush()
    while True:
        c = stores.commits + 1
        apply(store, ops_for(seed, c, store.length, store.records, max_batch=max_batch))
        stores.touch(META.key)
        stores.commit()
        out.write(f"ack {c}\n")
        out.flush()


if __name__ == "__main__":
    main()
