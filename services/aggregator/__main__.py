from services.aggregator.service import Aggregator
from shared.service import main

raise SystemExit(main(Aggregator))
