"""barstream gateway service."""
