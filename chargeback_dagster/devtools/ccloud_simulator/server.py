"""The simulator's HTTP server: Basic auth, routing of the Confluent Cloud API paths to the organisation's
listings, fault injection (faults.py) and pagination (pagination.py)."""

from __future__ import annotations

import base64
import functools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chargeback_dagster.devtools.ccloud_simulator.common import ApiError, error_body, json_text
from chargeback_dagster.devtools.ccloud_simulator.costs import (
    COSTS_DEFAULT_PAGE_SIZE,
    COSTS_PAGE_SIZE_MAX,
    costs_window,
)
from chargeback_dagster.devtools.ccloud_simulator.faults import Faults
from chargeback_dagster.devtools.ccloud_simulator.org import SimulatedOrg
from chargeback_dagster.devtools.ccloud_simulator.pagination import paginate

DEFAULT_KEY = "SIMKEY0000000001"
DEFAULT_SECRET = "sim-secret-do-not-log"


class CCloudSimulator:
    """Threaded HTTP server serving a ``SimulatedOrg`` with the Confluent Cloud API shapes.

    ``key``/``secret`` are the accepted Basic-auth credentials; ``flink_key``/``flink_secret`` (optional)
    are additionally accepted on the Flink statements path. ``request_log`` holds
    ``(monotonic time, method, path, query, status)`` per request.
    """

    def __init__(
        self,
        org: SimulatedOrg,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: str = DEFAULT_KEY,
        secret: str = DEFAULT_SECRET,
        flink_key: str | None = None,
        flink_secret: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.org = org
        self.host = host
        self.key = key
        self.secret = secret
        self.flink_key = flink_key
        self.flink_secret = flink_secret
        self.faults = faults or Faults()
        self.request_log: list[tuple[float, str, str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> CCloudSimulator:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="ccloud-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CCloudSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, path_prefix: str) -> list[tuple[float, str, str, str, int]]:
        with self._lock:
            return [r for r in self.request_log if r[2].startswith(path_prefix)]

    # -- request handling

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers + body in one send (avoids Nagle/delayed-ACK stalls on keep-alive)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                sim._handle(self, "GET")

            def _not_allowed(self) -> None:
                sim._handle(self, self.command)

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

        return Handler

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        path, query = parts.path, parts.query
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        length = int(req.headers.get("Content-Length") or 0)
        if length:
            req.rfile.read(length)
        headers: dict[str, str] = {}
        try:
            body = self._dispatch(req, method, path, params)
            status = 200
        except ApiError as exc:
            status, body, headers = exc.status, error_body(exc.status, exc.detail), exc.headers
        payload = json_text(body).encode()
        with self._lock:
            self.request_log.append((time.monotonic(), method, path, query, status))
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                req.send_header(k, v)
            req.end_headers()
            req.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
            pass

    def _authorized(self, header: str | None, flink: bool) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if (user, password) == (self.key, self.secret):
            return True
        return (
            flink and self.flink_key is not None and (user, password) == (self.flink_key, self.flink_secret)
        )

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str, path: str, params: dict[str, str]) -> Any:
        faults = self.faults
        if faults.applies_to(path) and faults.slow_seconds > 0:
            time.sleep(faults.slow_seconds)
        if faults.down and faults.applies_to(path):
            raise ApiError(503, "service unavailable")
        segs = [s for s in path.split("/") if s]
        is_flink = len(segs) == 7 and segs[:3] == ["sql", "v1", "organizations"] and segs[6] == "statements"
        if not self._authorized(req.headers.get("Authorization"), is_flink):
            raise ApiError(401, "Unauthorized")
        with self._lock:
            fault = self.faults.take(path, params)
        if fault is not None:
            raise fault
        if method != "GET":
            raise ApiError(405, f"method {method} not allowed")
        org = self.org

        page = functools.partial(paginate, self.url, self.faults, path, params)

        def need_env() -> str:
            env = params.get("environment")
            if not env:
                raise ApiError(400, "Missing required query parameter: environment")
            return env

        if path == "/org/v2/environments":
            return page(org.api_environments(), "org/v2", "EnvironmentList")
        if path == "/cmk/v2/clusters":
            return page(org.api_clusters(need_env()), "cmk/v2", "ClusterList")
        if path == "/srcm/v3/clusters":
            return page(org.api_schema_registries(need_env()), "srcm/v3", "ClusterList")
        if path == "/ksqldbcm/v2/clusters":
            return page(org.api_ksqldb(need_env()), "ksqldbcm/v2", "ClusterList")
        if path == "/fcpm/v2/compute-pools":
            return page(org.api_compute_pools(need_env()), "fcpm/v2", "ComputePoolList")
        if path == "/iam/v2/service-accounts":
            return page(org.api_service_accounts(), "iam/v2", "ServiceAccountList")
        if path == "/iam/v2/users":
            return page(org.api_users(), "iam/v2", "UserList")
        if path == "/iam/v2/api-keys":
            return page(org.api_api_keys(), "iam/v2", "ApiKeyList")
        if path == "/iam/v2/identity-providers":
            return page(org.api_identity_providers(), "iam/v2", "IdentityProviderList")
        if len(segs) == 5 and segs[:3] == ["iam", "v2", "identity-providers"] and segs[4] == "identity-pools":
            pools = org.api_identity_pools(segs[3])
            if pools is None:
                raise ApiError(404, f"identity provider {segs[3]} not found")
            return page(pools, "iam/v2", "IdentityPoolList")
        if (
            len(segs) == 7
            and segs[:3] == ["connect", "v1", "environments"]
            and segs[4] == "clusters"
            and (segs[6] == "connectors")
        ):
            env_id, kafka_id = segs[3], segs[5]
            if env_id not in {e["id"] for e in org.environments} or kafka_id not in {
                c.id for c in org.live_clusters() if c.env_id == env_id
            }:
                raise ApiError(404, f"cluster {kafka_id} not found in environment {env_id}")
            expand = {x.strip() for x in params.get("expand", "").split(",") if x.strip()}
            return org.api_connectors(env_id, kafka_id, expand)
        if is_flink:
            org_id, env_id = segs[3], segs[5]
            if org_id != org.org_id or env_id not in {e["id"] for e in org.environments}:
                raise ApiError(404, f"environment {env_id} not found")
            return page(
                org.api_statements(org_id, env_id),
                "sql/v1",
                "StatementList",
                include_total=False,
            )
        if path == "/billing/v1/costs":
            start, end = costs_window(params)
            return page(
                org.cost_lines(start, end),
                "billing/v1",
                "CostList",
                page_max=COSTS_PAGE_SIZE_MAX,
                page_default=COSTS_DEFAULT_PAGE_SIZE,
            )
        raise ApiError(404, f"no route for {path}")
