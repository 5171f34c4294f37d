from services.resampler.service import Resampler
from shared.service import main

raise SystemExit(main(Resampler))
