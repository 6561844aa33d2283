# One image for the code-location gRPC server (which also executes the runs), the webserver and the daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /opt/chargeback

COPY pyproject.toml README.md ./
COPY chargeback_dagster ./chargeback_dagster
RUN pip install --no-cache-dir '.[kafka]'

# Instance config (PostgreSQL storage, run queue, concurrency, run monitoring) and the workspace that points
# the webserver and daemon at the `codeserver` service.
COPY docker/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY docker/workspace.yaml ${DAGSTER_HOME}/workspace.yaml
RUN mkdir -p /opt/chargeback/config /opt/chargeback/output /opt/chargeback/data

EXPOSE 3000 4000
