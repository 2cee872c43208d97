"""The ``envelope:`` block of a policy rule, checked at start-up like every other key."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

InvalidAction = Literal["observe", "kill"]
LowConfidenceAction = Literal["observe", "escalate", "block"]


class EnvelopeSettings(BaseModel):
    """Agents a rule matches are workers: each completion of theirs must be an envelope."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # A JSON Schema file the envelope must also satisfy; default: the four fields alone.
    schema_file: Path | None = Field(default=None, alias="schema")
    # Ask the provider for the envelope (response_format, or a forced Anthropic tool) when the
    # agent did not ask for another format. Off unless set: it changes what the agent sent.
    inject: bool = False
    on_invalid: InvalidAction = "observe"
    min_confidence: float | None = Field(default=None, ge=0, le=1)
    on_low_confidence: LowConfidenceAction = "observe"

    @model_validator(mode="after")
    def _schema_loads(self) -> EnvelopeSettings:
        if self.schema_file is not None:
            load_validator(self.schema_file)  # a broken schema fails start-up, not a call
        return self

    @property
    def may_withhold(self) -> bool:
        """Whether a verdict can stop the answer reaching the caller, so a stream's final
        events must wait for it."""
        return self.on_invalid == "kill" or (
            self.min_confidence is not None and self.on_low_confidence == "block"
        )


def merge_envelope(
    current: EnvelopeSettings | None, later: EnvelopeSettings | None
) -> EnvelopeSettings | None:
    """Like limits, a later rule overrides only the envelope fields it sets."""
    if later is None or current is None:
        return later if later is not None else current
    return current.model_copy(update={k: getattr(later, k) for k in later.model_fields_set})


@lru_cache(maxsize=64)
def load_validator(path: Path) -> Validator:
    """The schema's validator. jsonschema loads here, at start-up when a rule names a schema
    and never otherwise (it costs a few megabytes)."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    try:
        schema: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read the envelope schema {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ValueError(f"the envelope schema {path} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ValueError(f"the envelope schema {path} must be a JSON object")
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(
            f"the envelope schema {path} is not a valid JSON Schema: {exc.message}"
        ) from exc
    validator: Validator = cls(schema)
    return validator
