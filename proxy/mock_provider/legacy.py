"""The endpoints besides chat, Responses and Messages that the mock bills: OpenAI's legacy
text completions (``/v1/completions``) and Anthropic's Message Batches
(``/v1/messages/batches``), each billed as the real provider bills them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import anthropic_wire
from .common import (
    Completion,
    ParsedRequest,
    RequestError,
    StreamEvent,
    coerced_count,
    count_tokens,
    optional_bool,
    optional_int,
    random_hex_id,
    random_id,
)

# The legacy endpoint's cap when the request names none.
DEFAULT_COMPLETION_CAP = 16


def parse_completions_request(body: Any) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]  # one prompt as token ids
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise RequestError("Missing required parameter: 'prompt'.", param="prompt")
    tokens = 0
    for one in prompts:
        tokens += count_tokens(one) if isinstance(one, str) else len(one)
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        tokens += count_tokens(suffix) * len(prompts)
    cap = optional_int(body, "max_tokens", minimum=1)
    # best_of completions are generated per prompt (n returned), each billed.
    choices = len(prompts) * max(coerced_count(body, "n"), coerced_count(body, "best_of"))
    return ParsedRequest(
        body=body,
        model=str(body.get("model", "")),
        prompt_tokens=tokens,
        last_user_text=prompts[-1] if isinstance(prompts[-1], str) else "",
        cap=DEFAULT_COMPLETION_CAP if cap is None and "max_tokens" not in body else cap,
        stream=optional_bool(body, "stream"),
        choices=choices,
    )


def completion_body(request: ParsedRequest, completion: Completion) -> dict[str, Any]:
    completion_tokens = completion.tokens * request.choices
    return {
        "id": random_id("cmpl-", 29),
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "text": completion.text,
                "logprobs": None,
                "finish_reason": "length" if completion.truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": request.prompt_tokens + completion_tokens,
        },
    }


def no_stream(request: ParsedRequest, completion: Completion) -> list[StreamEvent]:
    raise RequestError("This mock does not stream legacy completions.", param="stream")


def batch_items(body: Any) -> list[ParsedRequest]:
    """Every item of a Message Batch, parsed as the Messages call it is."""
    items = body.get("requests") if isinstance(body, Mapping) else None
    if not isinstance(items, list) or not items:
        raise RequestError("requests: Field required")
    parsed = []
    for item in items:
        params = item.get("params") if isinstance(item, Mapping) else None
        if not isinstance(params, Mapping):
            raise RequestError("requests.params: Field required")
        parsed.append(anthropic_wire.parse_messages_request(params))
    return parsed


def batch_body(count: int) -> dict[str, Any]:
    """A batch just accepted: results, and their usage, come later."""
    return {
        "id": random_hex_id("msgbatch_", 24),
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": count,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results_url": None,
    }
