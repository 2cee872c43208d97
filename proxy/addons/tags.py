"""The ``X-Tripwire-*`` headers on every forwarded answer: the call's task and agent, the
task's figures after the call, and the time Tripwire itself took."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.pipeline.call import Call
from proxy.session.base import TaskView


class TagHeaders:
    name = "tag_headers"

    def response_headers(
        self, call: Call, headers: CIMultiDict[str], view: TaskView, overhead_s: float
    ) -> None:
        headers["X-Tripwire-Task"] = call.task
        headers["X-Tripwire-Agent"] = call.agent
        headers["X-Tripwire-Tokens-Used"] = str(view.tokens_used)
        left = view.tokens_left
        if left is not None:
            headers["X-Tripwire-Tokens-Left"] = str(left)
        headers["X-Tripwire-Calls"] = str(view.calls)
        headers["X-Tripwire-Hops"] = str(view.hops)
        headers["X-Tripwire-Overhead-Ms"] = f"{overhead_s * 1000:.2f}"
