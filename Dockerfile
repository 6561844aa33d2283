# One image for the code-location server, the webserver and the daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /opt/chargeback

COPY pyproject.toml README.md ./
COPY chargeback_dagster ./chargeback_dagster
RUN pip install --no-cache-dir '.[kafka]'

COPY dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY docker/workspace.yaml ${DAGSTER_HOME}/workspace.yaml
