"""Policy settings of the content detectors: the ``cycle:``, ``near_duplicate:``,
``no_progress:`` and ``tool_loop:`` sections of a policy or a rule.

Every section has ``action``: ``kill`` stops the task like any other trip, ``observe`` only logs
and counts the trip (shadow mode: watch what a detector would have stopped on your own traffic
before letting it stop anything). The defaults were chosen on a scripted corpus's tuning split
and checked on its held-out split and on wording it never saw (``python -m
bench.detection.synthetic``); ``bench/detection/results.md`` has the measurements.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DetectorAction = Literal["kill", "observe"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # A section written without an action observes; the shipped rules/policy.yaml sets
    # ``kill`` where the evidence allows it (bench/detection/results.md).
    action: DetectorAction = "observe"


class CycleSettings(_Section):
    """The task's outputs go round a cycle: A B A B ..., A B C A B C ...

    Output ``i`` continues a cycle of period ``p`` when it comes from the same agent as output
    ``i - p`` and the two are at least ``similarity`` alike. A cycle trips once it has run
    ``rounds`` times in a row (so period 2, 3 rounds: six outputs).
    """

    rounds: int = Field(default=2, ge=2, le=100)
    max_period: int = Field(default=6, ge=2, le=6)
    # Weighted Jaccard similarity of the outputs' content words (proxy.detectors.bag); 1.0:
    # the same words, in any order.
    similarity: float = Field(default=0.5, gt=0.0, le=1.0)


class NearDuplicateSettings(_Section):
    """One agent keeps giving nearly the same output, worded a little differently.

    Trips when an output and ``repeats - 1`` of the same agent's outputs among the task's last
    ``window`` (this one included) are each at least ``similarity`` alike (weighted Jaccard of
    their content words). Outputs under ``min_shingles`` word 3-shingles are neither compared
    nor counted in the window.
    """

    similarity: float = Field(default=0.7, gt=0.0, le=1.0)
    repeats: int = Field(default=3, ge=2, le=64)
    window: int = Field(default=10, ge=2, le=64)
    # Shorter outputs ("OK", "TERMINATE") are alike by nature: they are not compared.
    min_shingles: int = Field(default=8, ge=1)


class NoProgressSettings(_Section):
    """The task's recent outputs hardly say anything it has not said before.

    Over the task's last ``completions`` outputs, the share of word 3-shingles never seen
    earlier in the task stays below ``min_new_share``. The task's past is kept as a consistent
    sample of at most ``sample_size`` shingle hashes, so state stays bounded however long the
    task runs; ``min_sampled`` sampled shingles over the window are needed for a verdict.
    """

    completions: int = Field(default=4, ge=2, le=64)
    min_new_share: float = Field(default=0.2, ge=0.0, le=1.0)
    sample_size: int = Field(default=512, ge=64, le=16384)
    min_sampled: int = Field(default=32, ge=1)


class ToolLoopSettings(_Section):
    """An agent keeps making the same tool call, or the same round of calls, while the tools
    answer nothing new.

    Trips when an agent's tool calls since the last new tool result end in the same call
    (name and canonical arguments) ``repeats`` times in a row, or in a cycle of 2 to
    ``max_period`` calls run ``rounds`` times.
    """

    repeats: int = Field(default=4, ge=2, le=24)
    rounds: int = Field(default=3, ge=2, le=6)
    max_period: int = Field(default=4, ge=2, le=4)
