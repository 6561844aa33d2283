"""Teams (cost centres) of identities, resources and chargeback rows (docs/configuration.md §5.1).

Resolved once, when the inventory is gathered, and stored in the `team` column of `identities` and
`resources`; the outputs read it back. Precedence:

- an identity: the tenant's `teams.identities` (exact id), then the first of `teams.patterns` matching its
  id or display name, then what its ecosystem reported (`metadata.team`: `principal_to_team`, a static
  identity's `team`, the Prometheus `team_label`, else `default_team`), then a team named in its
  `description` (`teams.description_regex`, Confluent Cloud service accounts); else none;
- a resource: `teams.resources` (exact id), then the first of `teams.resource_patterns`; else none;
- a chargeback row: the team of its resource, else of its environment (`env_id`), else of its identity —
  a mapped resource beats the identity. The `v_chargeback` view (migration 0006) computes the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from chargeback_dagster.domain import Identity, Resource

if TYPE_CHECKING:  # the config imports the outputs, which import this module
    from chargeback_dagster.config.models import TeamsConfig


def identity_team(identity: Identity, teams: TeamsConfig) -> str | None:
    if identity.identity_id in teams.identities:
        return teams.identities[identity.identity_id]
    for pattern in teams.patterns:
        if pattern.matches(identity.identity_id, identity.display_name):
            return pattern.team
    reported = identity.metadata.get("team")
    if reported:
        return str(reported)
    description = identity.metadata.get("description")
    return teams.team_in_description(str(description)) if description else None


def resource_team(resource: Resource, teams: TeamsConfig) -> str | None:
    if resource.resource_id in teams.resources:
        return teams.resources[resource.resource_id]
    for pattern in teams.resource_patterns:
        if pattern.matches(resource.resource_id, resource.display_name):
            return pattern.team
    return None


def with_teams(
    identities: list[Identity], resources: list[Resource], teams: TeamsConfig
) -> tuple[list[Identity], list[Resource]]:
    """The gathered inventory with every team resolved; an identity without a display name shows its id."""
    return (
        [
            dataclasses.replace(i, display_name=i.display_name or i.identity_id, team=identity_team(i, teams))
            for i in identities
        ],
        [dataclasses.replace(r, team=resource_team(r, teams)) for r in resources],
    )


def row_team(
    resource_id: str,
    env_id: str,
    identity_id: str,
    resource_teams: Mapping[str, str | None],
    identity_teams: Mapping[str, str | None],
) -> str | None:
    """The team a chargeback row is charged to: its resource's, else its environment's, else its
    identity's (teams as stored in `resources` / `identities`)."""
    return resource_teams.get(resource_id) or resource_teams.get(env_id) or identity_teams.get(identity_id)
