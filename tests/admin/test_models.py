"""The admin API's request models: exactly the limits a task can hold, checked strictly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.admin.models import CreateTask, ListQuery, TaskLimits
from proxy.config import Limits
from proxy.session.base import OVERRIDABLE


def test_every_overridable_limit_and_nothing_else() -> None:
    assert set(TaskLimits.model_fields) == set(OVERRIDABLE) == set(Limits.model_fields)
    schema = TaskLimits.model_json_schema()
    assert schema["additionalProperties"] is False
    # Each limit may be left out, never sent as null.
    assert all("default" not in prop for prop in schema["properties"].values())


@pytest.mark.parametrize(
    "body",
    [
        '{"max_tokens": "500"}',
        '{"max_tokens": true}',
        '{"max_tokens": 1.5}',
        '{"max_tokens": null}',
        '{"max_cost_usd": NaN}',
        '{"max_duration": Infinity}',
        '{"max_duration": "30m"}',
        '{"max_hops": -1}',
        '{"max_tokenz": 5}',
    ],
)
def test_bad_limits(body: str) -> None:
    with pytest.raises(ValidationError):
        TaskLimits.model_validate_json(body, strict=True)


def test_good_limits_become_overrides() -> None:
    limits = TaskLimits.model_validate_json(
        '{"max_tokens": 2000.0, "max_cost_usd": 1, "max_duration": 90}', strict=True
    )
    assert limits.overrides() == {"max_tokens": 2000, "max_cost_usd": 1.0, "max_duration": 90.0}
    assert TaskLimits().overrides() == {}


def test_task_ids_cannot_hold_the_tenant_separator() -> None:
    with pytest.raises(ValidationError):
        CreateTask.model_validate({"task": "acme/job"})
    with pytest.raises(ValidationError):
        CreateTask.model_validate({"task": "has space"})
    assert CreateTask.model_validate({"task": "job-42_v1.2:x"}).task == "job-42_v1.2:x"


def test_list_query_defaults_and_strings() -> None:
    query = ListQuery.model_validate({"limit": "10", "ignored": "x"})
    assert (query.state, query.sort, query.order, query.limit) == ("all", "spend", "desc", 10)
    with pytest.raises(ValidationError):
        ListQuery.model_validate({"cursor": "abc"})
