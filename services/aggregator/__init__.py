"""barstream aggregator service."""
