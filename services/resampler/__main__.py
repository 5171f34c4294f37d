from barstream.services.resampler.service import Resampler
from barstream.shared.service import main

raise SystemExit(main(Resampler))
