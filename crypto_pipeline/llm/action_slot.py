"""The action's slot in a response: every answer opens with the same text, `{"action": "`, and the next
token names the action. So the model's distribution over that one token, after the prompt and that fixed
opening, is its choice of action: one forward pass and no generation, where only the action matters
(validation and test metrics, the anonymized audit). Greedy decoding under the grammar usually takes the
same action; how often it does is measured (docs/training.md), since the grammar also admits other
spellings of an action's first token.
"""

from __future__ import annotations

from typing import Any

from crypto_pipeline.llm.decision import Action

ACTION_PREFIX = '{"action": "'  # the grammar's fixed opening, and the training responses' own
ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)


def action_prefix_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer(ACTION_PREFIX, add_special_tokens=False)["input_ids"])


def action_token_ids(tokenizer: Any) -> list[int]:
    """The token that opens each action (ACTIONS order) right after ACTION_PREFIX; they must differ."""
    prefix = action_prefix_ids(tokenizer)
    ids = []
    for action in ACTIONS:
        tokens = tokenizer(ACTION_PREFIX + action, add_special_tokens=False)["input_ids"]
        if list(tokens[: len(prefix)]) != prefix:
            raise ValueError(f"the tokenizer merges {ACTION_PREFIX!r} with {action!r}: cannot score actions")
        ids.append(int(tokens[len(prefix)]))
    if len(set(ids)) != len(ids):
        raise ValueError("two actions open with the same token: cannot score them from one position")
    return ids


def scored_action(probabilities: dict[str, float]) -> str:
    """The most probable action (ties in ACTIONS order)."""
    return max(ACTIONS, key=lambda a: (probabilities[a], -ACTIONS.index(a)))
