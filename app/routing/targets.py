"""What a route and a set share in the routes file: a name's form, the Prefect target
(one of ``deployment``, ``deployment_id``, ``flow_id``, ``flow``) and the templated
``flow_run``, validated and compiled one way for both."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.config.values import check_flow_name
from app.routing.router import DeploymentTarget, FlowTarget, Target
from app.routing.templates import Lookup, compile_json, compile_text

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NAME_RULE = "must be 1-100 letters, digits, '_', '.' or '-'"
TARGET_FIELDS = ("deployment", "deployment_id", "flow_id", "flow")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlowRunModel(Strict):
    name: str | None = None
    parameters: dict[str, Any] | None = None
    tags: list[str] | None = None
    work_queue_name: str | None = None
    job_variables: dict[str, Any] | None = None


class TargetModel(Strict):
    """The target fields of a route or a set, and its flow run's templates."""

    connection: str | None = None
    deployment: str | None = None
    deployment_id: UUID | None = None
    flow_id: UUID | None = None
    flow: str | None = None  # a flow by name: looked up, or created, on first use
    flow_run: FlowRunModel = Field(default_factory=FlowRunModel)

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, value: str | None) -> str | None:
        if value is not None:
            flow, slash, deployment = value.partition("/")
            if not (flow and slash and deployment) or "/" in deployment:
                raise ValueError("must be 'flow-name/deployment-name'")
        return value

    @field_validator("flow")
    @classmethod
    def _flow_name(cls, value: str | None) -> str | None:
        return None if value is None else check_flow_name(value)

    def target(self, where: str) -> Target:
        """The one target given; ValueError naming ``where`` unless exactly one is."""
        given = [f for f in TARGET_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                f"{where}: give exactly one target: deployment, deployment_id, flow_id or flow"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.flow_id is not None or self.flow is not None:
            return FlowTarget(self.flow_id, name=self.flow)
        return DeploymentTarget(deployment_id=self.deployment_id, name=self.deployment)

    def compiled_flow_run(
        self, lookup: Lookup, where: str, default_name: str, *, of_set: bool = False
    ) -> dict[str, Any]:
        """Each ``flow_run`` field compiled (``name`` defaults to ``default_name``); a
        flow run never carries a secret: it would be stored and shown in Prefect."""
        compiled: dict[str, Any] = {}
        for field, value in self.flow_run.model_dump(exclude_none=True).items():
            at = f"{where}.flow_run.{field}"
            template = compile_json(value, lookup, where=at, of_set=of_set)
            if _uses_secrets(template):
                raise ValueError(
                    f"{at}: a flow run never carries a secret "
                    "(it would be stored and shown in Prefect)"
                )
            compiled[field] = template
        if "name" not in compiled:
            compiled["name"] = compile_text(default_name, lookup, where=where, of_set=of_set)
        return compiled


def _uses_secrets(template: Any) -> bool:
    if isinstance(template, dict):
        return any(_uses_secrets(v) for v in template.values())
    if isinstance(template, list):
        return any(_uses_secrets(v) for v in template)
    uses: bool = getattr(template, "uses_secrets", lambda: False)()
    return uses
