from services.downloader.service import Downloader
from shared.service import main

raise SystemExit(main(Downloader))
