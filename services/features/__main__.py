from barstream.services.features.service import Features
from barstream.shared.service import main

raise SystemExit(main(Features))
