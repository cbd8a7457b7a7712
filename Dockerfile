# etcdsync daemon image: `docker build -t etcdsync .`
# docker run --rm -v "$PWD/manifests:/manifests:ro" -e ETCDSYNC_ENDPOINTS=http://etcd:2379 -p 9090:9090 etcdsync
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY etcdsync ./etcdsync
# git: for --git (the daemon following a repository); its cache must be writable by the daemon's user
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
    && pip install . && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin etcdsync \
    && mkdir -p /var/cache/etcdsync/git && chown 10001 /var/cache/etcdsync/git
ENV ETCDSYNC_GIT_CACHE=/var/cache/etcdsync/git

USER 10001
WORKDIR /
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["etcdsync"]
CMD ["run", "-f", "/manifests", "--metrics-addr", "0.0.0.0:9090"]
