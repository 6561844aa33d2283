# The user-code image: the code-location gRPC server and every run worker (a container per run with
# docker-compose.yml's DockerRunLauncher, a Kubernetes Job per run with deploy/helm/values.yaml) run it.
# docker-compose.yml also runs the webserver and daemon on it; the Helm chart uses Dagster's own images for
# those. Run workers build the Dagster instance from its config, so the image carries both run launchers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /opt/chargeback

COPY pyproject.toml README.md ./
COPY chargeback_dagster ./chargeback_dagster
RUN pip install --no-cache-dir '.[kafka,docker,k8s]'

# Instance config for docker-compose.yml (PostgreSQL storage, run queue, concurrency, run monitoring,
# DockerRunLauncher) and the workspace that points the webserver and daemon at the `codeserver` service.
# On Kubernetes the chart points DAGSTER_HOME at its own instance ConfigMap instead.
COPY docker/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY docker/workspace.yaml ${DAGSTER_HOME}/workspace.yaml
RUN mkdir -p /opt/chargeback/config /opt/chargeback/output /opt/chargeback/data ${DAGSTER_HOME}/storage

EXPOSE 3000 4000
