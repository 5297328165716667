# syntax=docker/dockerfile:1
# The ckpt-operator image: `ckpt-operator run` on python:3.11-slim, without the torch extra.
#   docker build -t ckpt-operator:dev .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ckpt-operator
WORKDIR /src
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p operator/ckpt_operator && touch operator/ckpt_operator/__init__.py \
    && /opt/ckpt-operator/bin/pip install . \
    && /opt/ckpt-operator/bin/pip uninstall -y ckpt-operator
COPY operator ./operator
RUN /opt/ckpt-operator/bin/pip install --no-deps . \
    && /opt/ckpt-operator/bin/ckpt-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ckpt-operator" \
      org.opencontainers.image.description="Resume training from the newest valid checkpoint; delete storage safely" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/ckpt-operator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/ckpt-operator /opt/ckpt-operator
# A fixed numeric uid/gid, so `runAsNonRoot` can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 ckpt \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin ckpt
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8080
ENTRYPOINT ["ckpt-operator", "run"]
