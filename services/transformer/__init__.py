"""barstream transformer service."""
