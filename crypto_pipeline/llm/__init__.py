"""The LLM decision layer: a MarketState in, a validated TradeDecision out, with any model behind it.

Light names are imported eagerly; providers that pull torch or httpx load on first access, so
`from crypto_pipeline.llm import parse_decision` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crypto_pipeline.llm.decision import Action, MemberVote, TradeDecision, parse_decision
from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT, RecentTrade, build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely

if TYPE_CHECKING:
    from crypto_pipeline.llm.fallback import Fallback
    from crypto_pipeline.llm.llama_cpp import LlamaCpp
    from crypto_pipeline.llm.local import LocalLLM
    from crypto_pipeline.llm.openai_compat import OpenAICompatible
    from crypto_pipeline.llm.rule_based import RuleBased
    from crypto_pipeline.llm.swarm import Swarm, TrackRecord

_LAZY = {
    "Fallback": "crypto_pipeline.llm.fallback",
    "LlamaCpp": "crypto_pipeline.llm.llama_cpp",
    "LocalLLM": "crypto_pipeline.llm.local",
    "OpenAICompatible": "crypto_pipeline.llm.openai_compat",
    "RuleBased": "crypto_pipeline.llm.rule_based",
    "Swarm": "crypto_pipeline.llm.swarm",
    "TrackRecord": "crypto_pipeline.llm.swarm",
}

__all__ = [
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "Action",
    "DecisionProvider",
    "Fallback",
    "LlamaCpp",
    "LocalLLM",
    "MemberVote",
    "OpenAICompatible",
    "RecentTrade",
    "RuleBased",
    "Swarm",
    "TrackRecord",
    "TradeDecision",
    "build_user_prompt",
    "decide_safely",
    "parse_decision",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crypto_pipeline.llm' has no attribute {name!r}")
