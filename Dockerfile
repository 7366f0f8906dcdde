# One image for every QueueFlow service: `queueflow ingest|reporting|worker|migrate`.
# Build: docker build -t queueflow:dev .

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/queueflow
WORKDIR /src
# Dependencies first, in their own layer: a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/queueflow/bin/pip install -r requirements.txt
COPY services ./services
COPY db ./db
RUN /opt/queueflow/bin/pip install --no-deps . \
    && /opt/queueflow/bin/queueflow --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="QueueFlow" \
      org.opencontainers.image.source="https://github.com/queueflow/queueflow" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the virtual environment crosses over: no compiler, pip cache or sources.
COPY --from=build /opt/queueflow /opt/queueflow
ENV PATH=/opt/queueflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes can verify runAsNonRoot without a passwd entry.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["queueflow"]
CMD ["--help"]
