"""The decision's structured forms, all generated from the bounds in `decision.py`: the xgrammar EBNF
that `LocalLLM` decodes with, its GBNF twin for llama.cpp, and the JSON schema sent to remote servers.

The grammar is a fixed JSON template with constrained slots (an enum for the action, bounded numbers with
at most one decimal, a short reasoning string); whatever it lets a model write, `parse_decision` accepts.
The JSON schema says the same in the form servers understand (OpenAI, vLLM and llama.cpp's
`response_format`, Ollama's `format`); servers differ in which keywords they enforce, so the parser still
has the last word.
"""

from __future__ import annotations

from typing import Any, Literal

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
    Action,
)

# What the grammar lets the model write as reasoning: short, one line, no quotes to escape.
GRAMMAR_REASONING_CHARS = 100
FIELDS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("confidence", CONFIDENCE_RANGE),
    ("position_size_pct", POSITION_SIZE_RANGE),
    ("stop_loss_pct", STOP_LOSS_RANGE),
    ("take_profit_pct", TAKE_PROFIT_RANGE),
)
SCHEMA_NAME = "trade_decision"


def _bounded_number_rule(upper: float) -> str:
    """EBNF for a number in [0, upper] with at most one decimal; `upper` a multiple of 10 in [20, 100]."""
    top = int(upper)
    if top != upper or top % 10 or not 20 <= top <= 100:
        raise ValueError(f"grammar supports upper bounds that are multiples of 10 in [20, 100], got {upper}")
    tens = top // 10
    two_digits = "[1-9] [0-9]" if tens == 10 else f"[1-{tens - 1}] [0-9]"
    return f'"{top}" | {two_digits} decimal? | [0-9] decimal?'


def decision_grammar(dialect: Literal["xgrammar", "gbnf"] = "xgrammar") -> str:
    """The decision template as EBNF (keys in the order the system prompt shows).

    xgrammar's EBNF and llama.cpp's GBNF share the syntax; only the escape of the NUL character differs.
    """
    for _, (low, _high) in FIELDS:
        if low != 0:
            raise ValueError("grammar numbers start at 0")
    actions = " | ".join(f'"{a.value}"' for a in Action)
    nul = "\\0" if dialect == "xgrammar" else "\\x00"

    def rule(name: str) -> str:  # GBNF rule names allow letters, digits and '-' only
        return name if dialect == "xgrammar" else name.replace("_", "-")

    lines = [
        'root ::= "{\\"action\\": \\"" action "\\""'
        + "".join(f' ", \\"{name}\\": " {rule(name)}' for name, _ in FIELDS)
        + ' ", \\"reasoning\\": \\"" reasoning "\\"}"',
        f"action ::= {actions}",
        'decimal ::= "." [0-9]',
        *(f"{rule(name)} ::= {_bounded_number_rule(bounds[1])}" for name, bounds in FIELDS),
        f'reasoning ::= [^"\\\\{nul}-\\x1f]{{0,{GRAMMAR_REASONING_CHARS}}}',
    ]
    return "\n".join(lines) + "\n"


def max_completion_chars() -> int:
    """The longest text the grammar allows: a hard bound on the tokens a constrained completion needs."""
    longest_action = max(len(a.value) for a in Action)
    text = '{"action": "' + "X" * longest_action + '"'
    for name, (_, high) in FIELDS:
        text += f', "{name}": ' + "X" * max(len(f"{int(high)}"), len(f"{int(high) - 1}.9"))
    text += ', "reasoning": "' + "X" * GRAMMAR_REASONING_CHARS + '"}'
    return len(text)


def decision_json_schema() -> dict[str, Any]:
    """JSON schema of the decision: every key required, nothing else allowed (OpenAI's strict mode rules)."""
    properties: dict[str, Any] = {"action": {"type": "string", "enum": [a.value for a in Action]}}
    for name, (low, high) in FIELDS:
        properties[name] = {"type": "number", "minimum": low, "maximum": high}
    properties["reasoning"] = {"type": "string", "maxLength": GRAMMAR_REASONING_CHARS}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
