from barstream.services.downloader.service import Downloader
from barstream.shared.service import main

raise SystemExit(main(Downloader))
