from barstream.services.aggregator.service import Aggregator
from barstream.shared.service import main

raise SystemExit(main(Aggregator))
