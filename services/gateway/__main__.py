from services.gateway.service import Gateway
from shared.service import main

raise SystemExit(main(Gateway))
