"""Organisation and IAM API objects in their published shapes: environments (``org/v2``), Kafka clusters
(``cmk/v2``), service accounts, users, API keys, identity providers and pools (``iam/v2``)."""

from __future__ import annotations

from typing import Any

from chargeback_dagster.devtools.ccloud_simulator.model import OrgModel


class OrgApi(OrgModel):
    """The organisation and IAM listings of ``SimulatedOrg`` (routes in server.py)."""

    def api_environments(self) -> list[dict]:
        return [
            {
                "api_version": "org/v2",
                "kind": "Environment",
                "id": e["id"],
                "metadata": self._meta(
                    "Environment",
                    e["id"],
                    e["created_at"],
                    self._crn(f"environment={e['id']}"),
                    "org/v2",
                    "environments",
                ),
                "display_name": e["display_name"],
                "stream_governance_config": {"package": "ESSENTIALS"},
            }
            for e in self.environments
        ]

    def api_clusters(self, env_id: str) -> list[dict]:
        out = []
        for c in self.live_clusters():
            if c.env_id != env_id:
                continue
            host = c.bootstrap.split("://", 1)[1].rsplit(":", 1)[0]
            config: dict[str, Any] = {"kind": c.kind}
            if c.kind == "Dedicated":
                config["cku"] = c.ckus
            out.append(
                {
                    "api_version": "cmk/v2",
                    "kind": "Cluster",
                    "id": c.id,
                    "metadata": self._meta(
                        "Cluster",
                        c.id,
                        c.created_at,
                        self._crn(f"environment={c.env_id}", f"cloud-cluster={c.id}", f"kafka={c.id}"),
                        "cmk/v2",
                        "clusters",
                    ),
                    "spec": {
                        "display_name": c.name,
                        "availability": "SINGLE_ZONE",
                        "cloud": self.spec.cloud,
                        "region": self.spec.region,
                        "config": config,
                        "kafka_bootstrap_endpoint": c.bootstrap,
                        "http_endpoint": f"https://{host}:443",
                        "api_endpoint": f"https://pkac-{c.id[4:9]}.{self.spec.region}."
                        f"{self.spec.cloud.lower()}.confluent.cloud",
                        "environment": {
                            "id": c.env_id,
                            "related": f"https://api.confluent.cloud/org/v2/environments/{c.env_id}",
                            "resource_name": self._crn(f"environment={c.env_id}"),
                        },
                    },
                    "status": {"phase": "PROVISIONED", **({"cku": c.ckus} if c.kind == "Dedicated" else {})},
                }
            )
        return out

    def api_service_accounts(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "ServiceAccount",
                "id": sa["id"],
                "metadata": self._meta(
                    "ServiceAccount",
                    sa["id"],
                    sa["created_at"],
                    self._crn(f"service-account={sa['id']}"),
                    "iam/v2",
                    "service-accounts",
                ),
                "display_name": sa["display_name"],
                "description": sa["description"],
            }
            for sa in self.service_accounts
        ]

    def api_users(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "User",
                "id": u["id"],
                "metadata": self._meta(
                    "User", u["id"], u["created_at"], self._crn(f"user={u['id']}"), "iam/v2", "users"
                ),
                "email": u["email"],
                "full_name": u["full_name"],
                "auth_type": "AUTH_TYPE_LOCAL",
            }
            for u in self.users
        ]

    def api_api_keys(self) -> list[dict]:
        out = []
        for k in self.live_api_keys():
            owner_kind = "User" if k.owner_id.startswith("u-") else "ServiceAccount"
            res_api = "cmk/v2" if k.resource_kind == "Cluster" else "srcm/v3"
            out.append(
                {
                    "api_version": "iam/v2",
                    "kind": "ApiKey",
                    "id": k.id,
                    "metadata": self._meta(
                        "ApiKey", k.id, k.created_at, self._crn(f"api-key={k.id}"), "iam/v2", "api-keys"
                    ),
                    "spec": {
                        "secret": None,
                        "display_name": "",
                        "description": k.description,
                        "owner": {
                            "id": k.owner_id,
                            "api_version": "iam/v2",
                            "kind": owner_kind,
                            "resource_name": self._crn(f"{owner_kind.lower()}={k.owner_id}"),
                        },
                        "resource": {
                            "id": k.resource_id,
                            "api_version": res_api,
                            "kind": k.resource_kind,
                            "environment": k.env_id,
                        },
                    },
                }
            )
        return out

    def api_identity_providers(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "IdentityProvider",
                "id": p["id"],
                "metadata": self._meta(
                    "IdentityProvider",
                    p["id"],
                    p["created_at"],
                    self._crn(f"identity-provider={p['id']}"),
                    "iam/v2",
                    "identity-providers",
                ),
                "display_name": p["display_name"],
                "description": "simulated identity provider",
                "state": "ENABLED",
                "issuer": "https://login.example.com/oauth2/default",
                "jwks_uri": "https://login.example.com/oauth2/default/v1/keys",
            }
            for p in self.identity_providers
        ]

    def api_identity_pools(self, provider_id: str) -> list[dict] | None:
        pools = self.identity_pools.get(provider_id)
        if pools is None:
            return None
        return [
            {
                "api_version": "iam/v2",
                "kind": "IdentityPool",
                "id": p["id"],
                "metadata": self._meta(
                    "IdentityPool",
                    p["id"],
                    p["created_at"],
                    self._crn(f"identity-provider={provider_id}", f"identity-pool={p['id']}"),
                    "iam/v2",
                    f"identity-providers/{provider_id}/identity-pools",
                ),
                "display_name": p["display_name"],
                "description": "simulated identity pool",
                "identity_claim": "claims.sub",
                "filter": 'claims.aud=="confluent"',
                "principal": p["id"],
                "state": "ENABLED",
            }
            for p in pools
        ]
