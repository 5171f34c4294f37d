"""barstream's shared vocabulary: records, stores, checkpoints, feeds, services."""
