"""barstream resampler service."""
