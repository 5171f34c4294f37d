"""``python -m barstream.services.gateway --config FILE [--drain] [--publish-hwm N]``."""

import sys

from barstream.services.gateway.service import Gateway
from barstream.shared.service import main

raise SystemExit(main(Gateway, Gateway.take_options(sys.argv[1:])))
