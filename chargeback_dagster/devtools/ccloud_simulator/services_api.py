"""Service API objects in their published shapes: connectors (``connect/v1``), Schema Registry clusters
(``srcm/v3``), ksqlDB clusters (``ksqldbcm/v2``), Flink compute pools (``fcpm/v2``) and statements
(``sql/v1``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chargeback_dagster.devtools.ccloud_simulator.common import iso
from chargeback_dagster.devtools.ccloud_simulator.model import OrgModel


class ServicesApi(OrgModel):
    """The service listings of ``SimulatedOrg`` (routes in server.py)."""

    def api_connectors(self, env_id: str, kafka_id: str, expand: set[str]) -> dict | list:
        cons = [
            c
            for c in self.connectors
            if c["env_id"] == env_id and c["cluster_id"] == kafka_id and c["deleted_at"] is None
        ]
        if not expand:
            return [c["name"] for c in cons]
        out: dict[str, Any] = {}
        for c in cons:
            entry: dict[str, Any] = {}
            if "id" in expand:
                entry["id"] = {"id": c["id"], "id_type": "ID"}
            if "info" in expand:
                entry["info"] = {"name": c["name"], "type": c["type"], "config": dict(c["config"])}
            if "status" in expand:
                entry["status"] = {
                    "name": c["name"],
                    "type": c["type"],
                    "connector": {"state": "RUNNING", "worker_id": c["name"], "trace": ""},
                    "tasks": [
                        {"id": t, "state": "RUNNING", "worker_id": c["name"]}
                        for t in range(int(c["config"]["tasks.max"]))
                    ],
                }
            out[c["name"]] = entry
        return out

    def api_schema_registries(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "srcm/v3",
                "kind": "Cluster",
                "id": sr["id"],
                "metadata": self._meta(
                    "Cluster",
                    sr["id"],
                    sr["created_at"],
                    self._crn(f"environment={env_id}", f"schema-registry={sr['id']}"),
                    "srcm/v3",
                    "clusters",
                ),
                "spec": {
                    "display_name": sr["display_name"],
                    "package": "ESSENTIALS",
                    "http_endpoint": sr["http_endpoint"],
                    "cloud": self.spec.cloud,
                    "region": self.spec.region,
                    "environment": {"id": env_id, "resource_name": self._crn(f"environment={env_id}")},
                },
                "status": {"phase": "PROVISIONED"},
            }
            for sr in self.schema_registries
            if sr["env_id"] == env_id
        ]

    def api_ksqldb(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "ksqldbcm/v2",
                "kind": "Cluster",
                "id": k["id"],
                "metadata": self._meta(
                    "Cluster",
                    k["id"],
                    k["created_at"],
                    self._crn(f"environment={env_id}", f"ksql={k['id']}"),
                    "ksqldbcm/v2",
                    "clusters",
                ),
                "spec": {
                    "display_name": k["display_name"],
                    "use_detailed_processing_log": True,
                    "csu": k["csu"],
                    "kafka_cluster": {"id": k["kafka_cluster_id"], "environment": env_id},
                    "credential_identity": {"id": k["owner_id"]},
                    "environment": {"id": env_id},
                },
                "status": {
                    "phase": "PROVISIONED",
                    "http_endpoint": f"https://pksqlc-{k['id'][7:]}.example",
                    "storage": 125,
                },
            }
            for k in self.ksqldb_clusters
            if k["env_id"] == env_id
        ]

    def api_compute_pools(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "fcpm/v2",
                "kind": "ComputePool",
                "id": p["id"],
                "metadata": {
                    **self._meta(
                        "ComputePool", p["id"], p["created_at"], p["crn"], "fcpm/v2", "compute-pools"
                    )
                },
                "spec": {
                    "display_name": p["display_name"],
                    "cloud": p["cloud"],
                    "region": p["region"],
                    "max_cfu": p["max_cfu"],
                    "environment": {"id": env_id},
                },
                "status": {"phase": "PROVISIONED", "current_cfu": 2},
            }
            for p in self.flink_pools
            if p["env_id"] == env_id
        ]

    def api_statements(self, org_id: str, env_id: str) -> list[dict]:
        if org_id != self.org_id:
            return []
        return [
            {
                "api_version": "sql/v1",
                "kind": "Statement",
                "organization_id": self.org_id,
                "environment_id": env_id,
                "name": st["name"],
                "metadata": {
                    "self": f"/sql/v1/organizations/{self.org_id}/environments/{env_id}"
                    f"/statements/{st['name']}",
                    "uid": st["uid"],
                    "created_at": iso(st["created_at"]),
                    "updated_at": iso(st["created_at"] + timedelta(hours=1)),
                    "resource_version": "1",
                },
                "spec": {
                    "statement": f"INSERT INTO sink_{st['name'][-4:]} SELECT * FROM source;",
                    "compute_pool_id": st["pool_id"],
                    "compute_pool": {"id": st["pool_id"]},
                    "principal": st["principal"],
                    "stopped": st["phase"] == "STOPPED",
                    "properties": {"sql.current-catalog": env_id},
                },
                "status": {"phase": st["phase"], "detail": ""},
            }
            for st in self.statements
            if st["env_id"] == env_id
        ]
