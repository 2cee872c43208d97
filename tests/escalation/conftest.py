from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.escalation.receiver import Receiver


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    """``make_receiver(statuses=[500], hang=False)`` starts a webhook receiver."""
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None, **options: Any) -> Receiver:
        receiver = Receiver(statuses, **options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()
