# One image for every QueueFlow service: `queueflow ingest|reporting|worker|migrate|smoke`.
# Build: docker build -t queueflow:dev --build-arg VERSION=0.1.0 \
#          --build-arg REVISION="$(git rev-parse HEAD)" .
# Without an image registry, build on a local Debian base instead (README, "Building the image"):
#   docker build --network host --build-arg PYTHON_IMAGE="$(.ci/base-image.sh)" ...
# Any Debian-based image with python3 (3.11+) and its venv module will do as the base.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A throwaway pip and build backend in /opt/build; the image's environment gets no pip at all.
RUN python3 -m venv /opt/build \
    && python3 -m venv --without-pip /opt/queueflow
WORKDIR /src
# Dependencies first, in their own layer: a source change does not reinstall them. Every
# file is pinned by hash (`make lock` refreshes the locks) and is a wheel: nothing compiles.
COPY requirements.lock requirements-build.lock ./
RUN /opt/build/bin/pip install --require-hashes --only-binary :all: -r requirements-build.lock \
    && /opt/build/bin/pip --python /opt/queueflow/bin/python install \
       --require-hashes --only-binary :all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY services ./services
COPY db ./db
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/queueflow/bin/python install --no-deps --no-index \
       /tmp/dist/queueflow-*.whl \
    && /opt/queueflow/bin/queueflow --version

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="QueueFlow" \
      org.opencontainers.image.source="https://github.com/queueflow/queueflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Nothing installs packages at run time: the base's pip, ensurepip and bundled wheels go.
RUN rm -rf /usr/local/bin/pip /usr/local/bin/pip3* \
      /usr/local/lib/python3*/site-packages/pip /usr/local/lib/python3*/site-packages/pip-* \
      /usr/local/lib/python3*/ensurepip /usr/lib/python3*/ensurepip /usr/share/python-wheels \
    && ! python3 -m pip --version 2>/dev/null
# Only the virtual environment crosses over: no compiler, pip, build backend or sources.
COPY --from=build /opt/queueflow /opt/queueflow
ENV PATH=/opt/queueflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes can verify runAsNonRoot without a passwd entry. Everything is
# world-readable and nothing needs writing outside /tmp, so any UID with group 0 (OpenShift's
# arbitrary UIDs) runs it the same, on a read-only root filesystem.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["queueflow"]
CMD ["--help"]
