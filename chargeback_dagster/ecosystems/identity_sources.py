"""Identities from Prometheus labels and/or a static list (docs/self-managed-kafka.md §4,
docs/generic-metrics.md §4).

Shared by the self-managed Kafka and generic ecosystems, which configure identities the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from chargeback_dagster.domain import Identity


def principal_identities(
    principals: Iterable[str], identity_source, label_teams: Mapping[str, str] | None = None
) -> list[Identity]:
    """One `principal` identity per discovered label value; its team is `principal_to_team`'s, else the one
    its series were labelled with (`label_teams`), else `default_team`."""
    mapping = identity_source.principal_to_team
    label_teams = label_teams or {}
    identities = []
    for principal in sorted(set(p for p in principals if p)):
        team = mapping.get(principal) or label_teams.get(principal) or identity_source.default_team
        identities.append(
            Identity(
                identity_id=principal,
                identity_type="principal",
                display_name=mapping.get(principal, principal),
                metadata={"raw_principal": principal, "team": team},
            )
        )
    return identities


def static_identities(identity_source) -> list[Identity]:
    return [
        Identity(
            identity_id=item.identity_id,
            identity_type=item.identity_type,
            display_name=item.display_name or item.identity_id,
            metadata={"team": item.team or identity_source.default_team},
        )
        for item in identity_source.static_identities
    ]


def merge_identities(discovered: list[Identity], static: list[Identity]) -> list[Identity]:
    """Union of both sources; a static entry wins over a discovered one with the same id."""
    by_id = {identity.identity_id: identity for identity in discovered}
    by_id.update({identity.identity_id: identity for identity in static})
    return [by_id[key] for key in sorted(by_id)]


def static_ids(identity_source) -> tuple[str, ...]:
    """resource_active of every line when the source includes `static`."""
    if not identity_source.includes_static:
        return ()
    return tuple(sorted({item.identity_id for item in identity_source.static_identities}))
