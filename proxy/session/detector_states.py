"""What one replica knows of its tasks' content-detector states in Redis.

The Redis ledger keeps each task's content-detector state in the task's hash with a version
that every write raises. A replica remembers, per task, the version it last wrote or was told
of and the state at that version, so its next update computes from it and writes it back in one
step (checked against the version on the server) rather than reading it first. The settle
script tells of a newer version, with its state, when another replica wrote one; an update that
still finds it stale gets the current one in the reply. Bounded: a task forgotten here costs one
such reply, never a wrong count.
"""

from __future__ import annotations

import base64
from collections import OrderedDict

from proxy.detectors.content import ContentState, Plain

# Tasks whose states one replica remembers; the least recently used is forgotten first.
MAX_KNOWN_STATES = 2048
# The version of a task whose state was never written.
NO_VERSION = "0"


def encode(state: ContentState) -> str:
    return base64.b64encode(state.to_bytes()).decode()


def decode(stored: str) -> ContentState:
    """A stored state; one that does not read (another build's, or damaged) starts afresh."""
    try:
        return ContentState.from_bytes(base64.b64decode(stored))
    except ValueError:  # binascii.Error is one
        return ContentState()


class KnownStates:
    def __init__(self, bound: int = MAX_KNOWN_STATES) -> None:
        self._bound = bound
        # Per task: the version, and the state as plain tuples (untracked by the garbage
        # collector) or as stored in Redis until first needed.
        self._states: OrderedDict[str, tuple[str, Plain | str]] = OrderedDict()

    def version(self, task: str) -> str:
        entry = self._states.get(task)
        return NO_VERSION if entry is None else entry[0]

    def take(self, task: str) -> tuple[str, ContentState]:
        """The version and state to compute the task's next update from."""
        entry = self._states.get(task)
        if entry is None:
            return NO_VERSION, ContentState()
        self._states.move_to_end(task)
        version, state = entry
        if isinstance(state, str):
            decoded = decode(state)
            self._states[task] = (version, decoded.plain())
            return version, decoded
        return version, ContentState.from_plain(state)

    def told(self, task: str, held: str, version: str, stored: str) -> None:
        """A settle's news of the task's state: ``version`` (with the state ``stored``) where
        this replica held ``held``. Taken only if nothing newer was learnt meanwhile."""
        if version == held or self.version(task) != held:
            return
        self._put(task, version, stored)

    def wrote(self, task: str, version: str, state: ContentState) -> None:
        self._put(task, version, state.plain())

    def forget(self, task: str) -> None:
        self._states.pop(task, None)

    def _put(self, task: str, version: str, state: Plain | str) -> None:
        self._states[task] = (version, state)
        self._states.move_to_end(task)
        if len(self._states) > self._bound:
            self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)
