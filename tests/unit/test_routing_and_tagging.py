import pytest

from proxy.config import Tagging
from proxy.errors import RouteError
from proxy.server.routing import resolve
from proxy.server.tagging import Tagger

UPSTREAMS = frozenset({"openai", "anthropic", "local"})


def test_default_routes() -> None:
    assert resolve("/v1/chat/completions", UPSTREAMS).upstream == "openai"
    assert resolve("/v1/messages", UPSTREAMS).upstream == "anthropic"
    assert resolve("/v1/messages/count_tokens", UPSTREAMS).upstream == "anthropic"


def test_task_agent_and_named_upstream_prefixes() -> None:
    route = resolve("/t/job-42/a/planner/u/local/v1/chat/completions", UPSTREAMS)
    assert (route.task, route.agent, route.upstream, route.path) == (
        "job-42",
        "planner",
        "local",
        "/v1/chat/completions",
    )
    assert resolve("/t/job%2042/v1/responses", UPSTREAMS).task == "job 42"


def test_no_open_relay() -> None:
    with pytest.raises(RouteError):
        resolve("/u/evil.example.com/v1/chat/completions", UPSTREAMS)
    with pytest.raises(RouteError):
        resolve("/https://evil.example.com/v1/chat", UPSTREAMS)


def test_task_sources_in_order() -> None:
    tagger = Tagger(Tagging())
    headers = {"x-litellm-session-id": "from-litellm", "authorization": "Bearer sk-1"}
    assert tagger.task({"x-task-id": "explicit", **headers}, "url") == "explicit"
    assert tagger.task(headers, "url") == "from-litellm"
    assert tagger.task({"authorization": "Bearer sk-1"}, "url") == "url"
    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert tagger.task(trace, None) == "4bf92f3577b34da6a3ce929d0e0e4736"
    by_key = tagger.task({"authorization": "Bearer sk-1"}, None)
    assert by_key.startswith("key:") and "sk-1" not in by_key
    assert by_key != tagger.task({"authorization": "Bearer sk-2"}, None)


def test_an_untagged_caller_without_a_credential_is_its_peer_address() -> None:
    tagger = Tagger(Tagging())
    assert tagger.tag({}, None, "10.1.2.3") == ("peer:10.1.2.3", "fallback")
    assert tagger.tag({}, None, "10.1.2.4")[0] != tagger.tag({}, None, "10.1.2.3")[0]
    # A credential still names the caller first, and a forwarded-for header never does.
    assert tagger.tag({"x-api-key": "k"}, None, "10.1.2.3")[0].startswith("key:")
    assert tagger.tag({"x-forwarded-for": "9.9.9.9"}, None, "10.1.2.3")[0] == "peer:10.1.2.3"


def test_agent_sources_in_order() -> None:
    tagger = Tagger(Tagging())
    assert tagger.agent({"x-agent-id": "critic"}, "planner", "You are...") == "critic"
    assert tagger.agent({}, "planner", "You are...") == "planner"
    inferred = tagger.agent({}, None, "You are a planner.")
    assert inferred.startswith("sys:")
    assert inferred == tagger.agent({}, None, "You are a planner.")
    assert inferred != tagger.agent({}, None, "You are a critic.")


def test_a_client_chosen_task_id_cannot_reach_into_a_tenants_namespace() -> None:
    tagger = Tagger(Tagging())
    # Tasks of tenant acme are keyed "acme/<task>"; a client's own id never contains a raw "/".
    assert tagger.task({"x-task-id": "acme/job-42"}, None) == "acme%2Fjob-42"
    assert tagger.task({}, "acme/job-42") == "acme%2Fjob-42"
