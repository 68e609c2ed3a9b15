"""The trading decision and the one parser that turns model text into it.

`parse_decision` is tolerant of form (code fences, prose around the JSON, key case, synonyms such as
"LONG") and strict on content: a missing or unknown action, a value out of range or an ambiguous answer
gives an *invalid HOLD* that carries the reason. It never raises, so no model output can become an order
by accident.
"""

from __future__ import annotations

import ast
import json
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Bounds of the content; the constrained-decoding grammar is generated from these same numbers.
CONFIDENCE_RANGE = (0.0, 100.0)
POSITION_SIZE_RANGE = (0.0, 100.0)
STOP_LOSS_RANGE = (0.0, 50.0)
TAKE_PROFIT_RANGE = (0.0, 100.0)
MAX_REASONING_CHARS = 300
# Model text longer than this is cut before parsing: a bounded cost whatever a model emits.
MAX_PARSE_CHARS = 20_000
_MAX_JSON_CANDIDATES = 64
_MAX_RAW_TEXT_CHARS = 2_000


class Action(StrEnum):
    """Spot only: SELL reduces or closes a long and never opens a short."""

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


# Synonyms models actually write. SHORT is deliberately absent: on spot it has no meaning, so it is
# rejected with a reason rather than mapped to SELL.
_ACTION_SYNONYMS: dict[str, Action] = {
    "BUY": Action.BUY,
    "LONG": Action.BUY,
    "GO_LONG": Action.BUY,
    "ENTER_LONG": Action.BUY,
    "SELL": Action.SELL,
    "EXIT": Action.SELL,
    "CLOSE": Action.SELL,
    "CLOSE_LONG": Action.SELL,
    "EXIT_LONG": Action.SELL,
    "HOLD": Action.HOLD,
    "WAIT": Action.HOLD,
    "NEUTRAL": Action.HOLD,
    "NONE": Action.HOLD,
    "NO_TRADE": Action.HOLD,
}

_KEY_ALIASES: dict[str, str] = {
    "action": "action",
    "decision": "action",
    "signal": "action",
    "side": "action",
    "confidence": "confidence",
    "conf": "confidence",
    "position_size_pct": "position_size_pct",
    "position_size": "position_size_pct",
    "size_pct": "position_size_pct",
    "size": "position_size_pct",
    "stop_loss_pct": "stop_loss_pct",
    "stop_loss": "stop_loss_pct",
    "sl_pct": "stop_loss_pct",
    "take_profit_pct": "take_profit_pct",
    "take_profit": "take_profit_pct",
    "tp_pct": "take_profit_pct",
    "reasoning": "reasoning",
    "reason": "reasoning",
    "rationale": "reasoning",
}
_NUMERIC_FIELDS = ("confidence", "position_size_pct", "stop_loss_pct", "take_profit_pct")
_FENCE = re.compile(r"```[a-zA-Z]*")


class MemberVote(BaseModel):
    """One swarm member's answer, kept with the consensus decision for audit."""

    model_config = ConfigDict(frozen=True)

    member: str
    action: Action
    confidence: float
    weight: float
    valid: bool
    error: str | None = None
    latency_ms: float | None = None


class TradeDecision(BaseModel):
    """What to do about one symbol at one decision time, and how the answer was obtained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action = Action.HOLD
    confidence: float = Field(0.0, ge=CONFIDENCE_RANGE[0], le=CONFIDENCE_RANGE[1], allow_inf_nan=False)
    position_size_pct: float = Field(
        0.0,
        ge=POSITION_SIZE_RANGE[0],
        le=POSITION_SIZE_RANGE[1],
        allow_inf_nan=False,
        description="Share of equity to buy (BUY) or to sell (SELL); the risk engine caps it.",
    )
    stop_loss_pct: float | None = Field(
        None, ge=STOP_LOSS_RANGE[0], le=STOP_LOSS_RANGE[1], allow_inf_nan=False
    )
    take_profit_pct: float | None = Field(
        None, ge=TAKE_PROFIT_RANGE[0], le=TAKE_PROFIT_RANGE[1], allow_inf_nan=False
    )
    reasoning: str = Field("", max_length=MAX_REASONING_CHARS)

    # --- what happened --------------------------------------------------------------------------
    valid: bool = True
    error: str | None = None
    symbol: str | None = None
    at: datetime | None = None
    provider: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    prompt_version: str | None = None
    prompt_hash: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    raw_text: str | None = Field(None, description="The model's text (first 2,000 chars), for audit.")
    output_mode: str | None = Field(
        None,
        description="How the output was constrained: grammar, gbnf, json_schema, ollama, json_object or text.",
    )
    votes: tuple[MemberVote, ...] = ()

    @model_validator(mode="after")
    def _invalid_means_hold(self) -> Self:
        if not self.valid and (self.action is not Action.HOLD or self.position_size_pct != 0):
            raise ValueError("an invalid decision must be a HOLD of size 0")
        if not self.valid and not self.error:
            raise ValueError("an invalid decision must say why (error)")
        return self

    @classmethod
    def invalid(cls, reason: str, **meta: Any) -> TradeDecision:
        """An invalid HOLD that carries the reason; `meta` fills the provenance fields."""
        return cls(action=Action.HOLD, valid=False, error=reason[:500], **meta)

    def with_meta(self, **meta: Any) -> TradeDecision:
        """A copy with provenance fields set (the content stays as parsed)."""
        if "raw_text" in meta and meta["raw_text"] is not None:
            meta["raw_text"] = meta["raw_text"][:_MAX_RAW_TEXT_CHARS]
        return self.model_copy(update=meta)


def parse_decision(text: str) -> TradeDecision:
    """The one way model text becomes a decision. Never raises; anything doubtful is an invalid HOLD."""
    try:
        return _parse(text)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises", whatever the input
        return TradeDecision.invalid(f"parser error: {type(exc).__name__}")


def _parse(text: Any) -> TradeDecision:
    if not isinstance(text, str):
        return TradeDecision.invalid(f"expected text, got {type(text).__name__}")
    if not text.strip():
        return TradeDecision.invalid("empty output")
    body = _FENCE.sub(" ", text[:MAX_PARSE_CHARS])
    objects = _json_objects(body)
    candidates = [found for obj in objects for found in _decision_objects(obj)]
    if not candidates:
        if "{" not in body:
            return TradeDecision.invalid("no JSON object in the output")
        if not objects:
            return TradeDecision.invalid("no complete JSON object in the output (truncated or malformed)")
        return TradeDecision.invalid("missing action: no JSON object with an 'action' key")
    normalized = [_normalize_keys(obj) for obj in candidates]
    actions = {str(obj.get("action")).strip().upper() for obj in normalized}
    if len(actions) > 1:
        return TradeDecision.invalid(f"ambiguous output: several decisions with actions {sorted(actions)}")
    return _to_decision(normalized[0])


def _json_objects(body: str) -> list[dict[str, Any]]:
    """Every JSON (or Python-literal) object that starts at a '{' of `body`, outermost first."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    consumed_until = -1
    starts = [m.start() for m in re.finditer(r"\{", body)][:_MAX_JSON_CANDIDATES]
    for start in starts:
        if start < consumed_until:
            continue  # inside an object already parsed: its nested dicts are not separate answers
        obj, end = _decode_at(decoder, body, start)
        if isinstance(obj, dict):
            found.append(obj)
            consumed_until = end
    return found


def _decision_objects(obj: dict[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    """The objects holding an action: `obj` itself, or ones nested in it ({"decision": {"action": ...}})."""
    action = _find_key(obj, "action")
    if action is not None and not isinstance(action, dict):
        return [obj]
    if depth >= 3:
        return []
    return [found for v in obj.values() if isinstance(v, dict) for found in _decision_objects(v, depth + 1)]


def _decode_at(decoder: json.JSONDecoder, body: str, start: int) -> tuple[Any, int]:
    try:
        return decoder.raw_decode(body, start)
    except (json.JSONDecodeError, RecursionError):
        pass
    # Lenient repairs for form only: trailing commas, and Python-style dicts ({'action': 'BUY'}).
    end = _matching_brace(body, start)
    if end is None:
        return None, start
    snippet = re.sub(r",\s*([}\]])", r"\1", body[start:end])
    try:
        return json.loads(snippet), end
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(snippet), end
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, start


def _matching_brace(body: str, start: int) -> int | None:
    """Index after the brace closing the one at `start`, ignoring braces inside quotes."""
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(body)):
        ch = body[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _canonical_key(key: Any) -> str | None:
    if not isinstance(key, str):
        return None
    flat = re.sub(r"[\s\-]+", "_", key.strip().lower())
    return _KEY_ALIASES.get(flat)


def _find_key(obj: dict[str, Any], field: str) -> Any:
    for key, value in obj.items():
        if _canonical_key(key) == field:
            return value
    return None


def _normalize_keys(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = _canonical_key(key)
        if field is not None and field not in out:  # the first spelling wins; later duplicates are noise
            out[field] = value
    return out


def _to_decision(fields: dict[str, Any]) -> TradeDecision:
    raw_action = fields.get("action")
    if not isinstance(raw_action, str):
        return TradeDecision.invalid(f"action must be a string, got {type(raw_action).__name__}")
    action_key = re.sub(r"[\s\-]+", "_", raw_action.strip().upper())
    if action_key in {"SHORT", "GO_SHORT", "ENTER_SHORT"}:
        return TradeDecision.invalid("action SHORT is not allowed: spot only, SELL never opens a short")
    action = _ACTION_SYNONYMS.get(action_key)
    if action is None:
        return TradeDecision.invalid(f"unknown action {raw_action[:40]!r}")

    values: dict[str, Any] = {"action": action}
    for name in _NUMERIC_FIELDS:
        if name not in fields or fields[name] is None:
            continue
        number = _to_number(fields[name])
        if number is None:
            return TradeDecision.invalid(f"{name} is not a number: {str(fields[name])[:40]!r}")
        values[name] = number
    if "confidence" not in values:
        return TradeDecision.invalid("missing confidence")
    if action is not Action.HOLD and "position_size_pct" not in values:
        return TradeDecision.invalid(f"missing position_size_pct for {action.value}")
    reasoning = fields.get("reasoning")
    if reasoning is not None:
        values["reasoning"] = str(reasoning).strip()[:MAX_REASONING_CHARS]
    try:
        return TradeDecision(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return TradeDecision.invalid(f"{where}: {first.get('msg', 'invalid value')}")


def _to_number(value: Any) -> float | None:
    """Numbers and numeric strings ("55", "55%", " 2.5 "); booleans, NaN and infinities are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*%?\s*", value)
        if match is None:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if math.isfinite(number) else None
