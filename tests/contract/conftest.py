from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from proxy.mock_provider import anthropic_wire, openai_wire

FIXED_TIME = 1_750_000_000.0


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the mock provider's ids, request ids and timestamps constant, so two answers to
    the same request are byte for byte the same, whichever way they travelled."""

    def fixed_id(prefix: str, length: int, alphabet: str = "0") -> str:
        return prefix + alphabet[0] * length

    def fixed_hex_id(prefix: str, length: int) -> str:
        return prefix + "0" * length

    monkeypatch.setattr(openai_wire, "random_id", fixed_id)
    monkeypatch.setattr(openai_wire, "random_hex_id", fixed_hex_id)
    monkeypatch.setattr(openai_wire, "time", SimpleNamespace(time=lambda: FIXED_TIME))
    monkeypatch.setattr(anthropic_wire, "random_id", fixed_id)


@pytest.fixture
def task(request: pytest.FixtureRequest) -> str:
    """A task id of this test's own, from its name and parameters."""
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:100]
