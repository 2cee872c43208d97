"""Rules that match how a task was named, and the shipped policy's choice for untagged
traffic."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import Policy, load_config
from proxy.errors import ConfigError
from proxy.policy.rules import PolicyBook

ROOT = Path(__file__).resolve().parents[2]


def test_a_rule_matches_only_its_tag_source() -> None:
    book = PolicyBook(
        Policy.model_validate(
            {
                "defaults": {"max_calls": 10},
                "rules": [
                    {"name": "untagged", "match": {"source": "fallback"}, "on_trip": "observe"},
                    {"name": "tokens", "match": {"source": "token"}, "limits": {"max_calls": 99}},
                ],
            }
        )
    )
    untagged = book.resolve("key:abc@20261204T000000Z", "a", "fallback")
    assert untagged.rules == ("untagged",) and untagged.on_trip == "observe"
    tagged = book.resolve("job-1", "a", "header")
    assert tagged.rules == () and tagged.on_trip == "kill" and tagged.limits.max_calls == 10
    assert book.resolve("job-1", "a", "token").limits.max_calls == 99


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="source"):
        load_config(None, policy={"rules": [{"match": {"source": "cookie"}}]})


def test_the_shipped_policy_lifts_size_limits_for_untagged_traffic_only() -> None:
    policy = Policy.model_validate(
        yaml.safe_load((ROOT / "rules" / "policy.yaml").read_text(encoding="utf-8"))
    )
    book = PolicyBook(policy)
    untagged = book.resolve("key:abc@20261204T000000Z", "sys:1", "fallback")
    assert untagged.limits.max_calls is None and untagged.limits.max_duration is None
    assert untagged.limits.max_hops is None
    assert untagged.on_trip == "kill" and untagged.near_duplicate.action == "kill"
    tagged = book.resolve("job-1", "planner", "header")
    assert tagged.limits.max_calls == 200 and tagged.limits.max_duration == 1800
