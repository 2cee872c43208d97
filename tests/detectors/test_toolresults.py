"""Tool results at the end of a request body, in each provider format."""

from __future__ import annotations

from proxy.detectors.toolresults import MAX_CHARS, tool_results


def test_chat_completions_tool_messages_after_the_last_assistant_message() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "fix it"},
            {"role": "tool", "tool_call_id": "0", "content": "an older result"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}, {"id": "2"}]},
            {"role": "tool", "tool_call_id": "1", "content": "3 failed"},
            {"role": "tool", "tool_call_id": "2", "content": [{"type": "text", "text": "ok"}]},
        ]
    }
    assert tool_results(body) == ["3 failed", "ok"]
    assert tool_results({"messages": body["messages"][:3]}) == []


def test_responses_function_call_outputs_at_the_end_of_the_input() -> None:
    body = {
        "input": [
            {"type": "message", "role": "user", "content": "go"},
            {"type": "function_call", "call_id": "a", "name": "search", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "7 hits"},
        ]
    }
    assert tool_results(body) == ["7 hits"]
    assert tool_results({"input": "just text"}) == []


def test_anthropic_tool_result_blocks_of_the_last_user_message() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "x"}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "done, 2 rows"},
                    {"type": "tool_result", "tool_use_id": "u",
                     "content": [{"type": "text", "text": "x" * (MAX_CHARS + 10)}]},
                    {"type": "text", "text": "and carry on"},
                ],
            },
        ]
    }  # fmt: skip
    assert tool_results(body) == ["done, 2 rows", "x" * MAX_CHARS]


def test_odd_shapes_give_nothing() -> None:
    assert tool_results({}) == []
    assert tool_results({"messages": ["not a message"]}) == []
    assert tool_results({"messages": [{"role": "tool", "content": 5}]}) == [""]
