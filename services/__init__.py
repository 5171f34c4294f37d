"""The five barstream services: downloader, transformer, aggregator, resampler, gateway."""
