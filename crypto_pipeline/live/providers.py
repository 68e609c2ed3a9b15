"""The decision provider of a live session: the rules, the registered model under an alias, an
OpenAI-compatible server, or a swarm of the registered model and the rules. When the alias (by default
`champion`) names no version yet, the newest `challenger` stands in, and the session says so (log and
`ProviderChoice.note`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.llm.provider import DecisionProvider

log = logging.getLogger(__name__)
REGISTERED_MODEL = "crypto-policy"
FALLBACK_ALIAS = "challenger"


@dataclass(frozen=True)
class ProviderChoice:
    provider: DecisionProvider
    model_version: str | None
    note: str


def alias_version(tracking_uri: str, alias: str, model_name: str = REGISTERED_MODEL) -> str | None:
    """The version number `alias` points at, or None when there is no such alias (or no registry)."""
    from mlflow import MlflowClient

    try:
        return str(MlflowClient(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except Exception:  # noqa: BLE001 - MLflow raises several types for "no such alias / model"
        return None


def choose_provider(name: str, alias: str, settings: Any, config: Any = None) -> ProviderChoice:
    """The provider `name` ('rules', 'local', 'openai' or 'swarm'); `config` (a `LiveConfig`) carries the
    OpenAI-compatible endpoint for 'openai'."""
    if name == "rules":
        from crypto_pipeline.llm.rule_based import RuleBased

        return ProviderChoice(RuleBased(), None, "rule-based provider")
    if name == "openai":
        from crypto_pipeline.llm.openai_compat import OpenAICompatible

        base_url = getattr(config, "openai_base_url", None)
        if not base_url:
            raise UserInputError("provider 'openai' needs openai_base_url (the server's …/v1 address)")
        model = config.openai_model
        provider = OpenAICompatible(base_url, model, api_key_env=config.openai_api_key_env)
        return ProviderChoice(provider, None, f"OpenAI-compatible {model} at {base_url}")
    if name == "swarm":
        from crypto_pipeline.llm.rule_based import RuleBased
        from crypto_pipeline.llm.swarm import Swarm

        member = registered_model(alias, settings)
        swarm = Swarm([member.provider, RuleBased()], quorum=0.5)
        return ProviderChoice(swarm, member.model_version, f"swarm of {member.note} and the rules")
    if name != "local":
        raise UserInputError(f"unknown provider {name!r}; expected 'rules', 'local', 'openai' or 'swarm'")
    return registered_model(alias, settings)


def registered_model(alias: str, settings: Any) -> ProviderChoice:
    """`LocalLLM` with the adapter of crypto-policy@alias, or of the newest challenger when `alias` is unset."""
    from crypto_pipeline.llm.local import LocalLLM, resolve_adapter

    uri = settings.mlflow_tracking_uri
    version = alias_version(uri, alias)
    note = f"{REGISTERED_MODEL}@{alias} (version {version})"
    if version is None and alias != FALLBACK_ALIAS:
        version = alias_version(uri, FALLBACK_ALIAS)
        if version is None:
            raise UserInputError(
                f"no {REGISTERED_MODEL}@{alias} and no @{FALLBACK_ALIAS} in the registry at {uri}: "
                "fine-tune first (crypto-pipeline finetune), or use provider 'rules'"
            )
        note = (
            f"no {REGISTERED_MODEL}@{alias} yet: falling back to the newest {FALLBACK_ALIAS} "
            f"(version {version})"
        )
        log.warning(note)
    elif version is None:
        raise UserInputError(f"no {REGISTERED_MODEL}@{alias} in the registry at {uri}")
    adapter = resolve_adapter(f"models:/{REGISTERED_MODEL}/{version}", settings)
    provider = LocalLLM(adapter=adapter, model_version=f"{REGISTERED_MODEL}:{version}", settings=settings)
    return ProviderChoice(provider, version, note)
