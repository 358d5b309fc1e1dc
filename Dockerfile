# schedulerd in a container. Build from the repository root:
#   docker build -t schedulerd .
#   docker run -e SCHEDULERD_REDIS_URL=redis://redis:6379/0 -e SCHEDULERD_QUEUES=default,high schedulerd
# Settings come from SCHEDULERD_* variables, flags after the image name, or a config file
# mounted at /etc/schedulerd/schedulerd.toml.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# setuptools reads README.md for the package's long description, so it is copied too.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY schedulerd ./schedulerd
RUN pip install . \
    && rm -rf /build

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a user database.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin schedulerd
USER 10001:10001
WORKDIR /

# The HTTP listener serves /healthz, /readyz and /metrics. It listens on all interfaces inside
# the container, so that probes and Prometheus scrapes can reach it; publish the port only
# where they need it. JSON logs suit container log collectors.
ENV SCHEDULERD_HTTP_ADDRESS=0.0.0.0:9464 \
    SCHEDULERD_LOG_FORMAT=json
EXPOSE 9464

# The image has no curl, so the check uses Python's urllib; urlopen raises on a 503, which
# makes the check fail. It reads the port from SCHEDULERD_HTTP_ADDRESS in case that changed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SCHEDULERD_HTTP_ADDRESS', '9464').rsplit(':', 1)[-1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# SIGTERM (docker stop) makes schedulerd release its leases and exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["schedulerd", "run"]
