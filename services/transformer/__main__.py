from services.transformer.service import Transformer
from shared.service import main

raise SystemExit(main(Transformer))
