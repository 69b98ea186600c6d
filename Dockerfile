# The balances service: `docker build -t balances .`, then see deploy/compose.yaml.
# Python 3.11, the version the suite runs on.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# generated/ holds the committed protobuf modules: the image needs no code generation.
COPY pyproject.toml ./
COPY generated/ generated/
COPY service/ service/
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 balances \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/balances \
       --create-home --shell /usr/sbin/nologin balances

# Numeric, so the runtime can tell it is not root without the image's /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/balances
EXPOSE 50051 8080

# The gRPC health service, asked by the image's own command (no extra probe binary).
# Plaintext: a server with [server.tls] needs its platform's TLS-aware check instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["balances", "health", "--target", "127.0.0.1:50051"]

ENTRYPOINT ["balances"]
CMD ["serve", "--config", "/etc/balances/balances.toml"]
