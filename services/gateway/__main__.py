"""``python -m services.gateway --config FILE [--drain] [--publish-hwm N]``."""

import sys

from services.gateway.service import Gateway
from shared.service import main

raise SystemExit(main(Gateway, Gateway.take_options(sys.argv[1:])))
