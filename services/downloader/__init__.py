"""barstream downloader service."""
