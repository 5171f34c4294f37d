# One image for every barstream service; docker-compose.yml picks the module per container.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE constraints.txt supervisord.conf ./
COPY shared ./shared
COPY services ./services
COPY barstream ./barstream
COPY config ./config
# constraints.txt: the versions `make venv` installs (README, "Dependencies")
RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /app barstream \
    && mkdir -p /data/downloader /data/raw /data/transformer /data/aggregator /data/resampler /data/features /data/gateway \
    && chown -R barstream /data
USER barstream
# Each container runs one service: python -m barstream.services.NAME --config config/compose.toml
CMD ["python", "-m", "barstream", "--help"]
