from barstream.services.transformer.service import Transformer
from barstream.shared.service import main

raise SystemExit(main(Transformer))
