# One image for every process of gmb-sync-queue: QueueService, SyncService, the Google emulator,
# the worker and the migration step differ only by their command (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 gmbsync
WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The source tree itself: `python -m ...` runs from /app, so the Alembic revisions
# (migrations/versions) and scripts/ are found as they are in a checkout.
COPY . .
RUN pip install --no-deps . \
    && mkdir -p /app/var && chown gmbsync /app/var
USER gmbsync

# QueueService, SyncService, the emulator; then the metrics of the queue, sync and a worker
# (when QUEUE_/SYNC_/WORKER_METRICS_ADDR turn them on, as docker-compose.yml does).
EXPOSE 50051 50052 8085 9464 9465 9466
CMD ["python", "-m", "queue_service"]
