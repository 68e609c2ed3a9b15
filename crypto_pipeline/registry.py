"""The registered model `crypto-policy` and the one provider factory: the model's name and aliases,
resolving a version number or alias to a version with its training cutoff and base model, the MLflow
client, loading a version as a `LocalLLM` (the same base for every caller), and `make_provider`, which
turns a provider spec (`rules | llm[:REF] | openai | llama-cpp | swarm[:REF]`) into a provider for the
CLI, backtests and live sessions alike.

Training logs and registers versions (`training/registry.py`); everything that reads them goes through
here, so the backtest that judged a version and the live session that trades it load the same weights.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_pipeline.config import Settings, get_settings
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.llm.llama_cpp import LlamaCpp
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.llm.swarm import Swarm
from crypto_pipeline.timeutil import as_utc

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MODEL_NAME = "crypto-policy"
CHAMPION = "champion"  # what live trades; moved only by the promotion gate
CHALLENGER = "challenger"  # the newest fine-tune, set by training
ALIASES = (CHAMPION, CHALLENGER)
# `models:/crypto-policy/3` or `models:/crypto-policy@champion` -> "3" / "champion"
_URI = re.compile(rf"^models:/{re.escape(MODEL_NAME)}(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")


# --- the registry: versions, aliases, resolution ------------------------------------------------


@dataclass(frozen=True)
class RegisteredModel:
    """One resolved version of `crypto-policy`: what a backtest needs to judge it and anyone to load it."""

    version: str
    training_cutoff: datetime | None
    base_model: str | None  # the `base_model` tag: the base it was trained on
    note: str  # how it was found, fallback included, for logs and reports

    @property
    def uri(self) -> str:
        return model_uri(self.version)

    @property
    def model_version(self) -> str:
        """The key decisions are journaled and cached under: the version, never an alias (aliases move)."""
        return f"{MODEL_NAME}:{self.version}"

    def base_folder(self) -> Path | None:
        """The base to put the adapter on: the one it was trained on when that is a folder here, else
        None (the embedded SmolLM2)."""
        return Path(self.base_model) if self.base_model and Path(self.base_model).is_dir() else None

    def base_note(self) -> str:
        folder = self.base_folder()
        if folder is not None:
            return f"on its base {folder.name}"
        missing = f" ({self.base_model} is not a folder here)" if self.base_model else ""
        return f"on the embedded base{missing}"


def model_uri(version: str) -> str:
    return f"models:/{MODEL_NAME}/{version}"


def version_of(model_version: str | None) -> str | None:
    """The version number in a journaled `model_version` (`crypto-policy:3` -> "3"); None for other models."""
    prefix = f"{MODEL_NAME}:"
    if model_version and model_version.startswith(prefix):
        return model_version.removeprefix(prefix)
    return None


def ref_of_uri(uri: str | Path | None) -> str | None:
    """The version number or alias an MLflow URI of `crypto-policy` names; None for anything else."""
    found = _URI.match(str(uri)) if uri else None
    return (found["version"] or found["alias"]) if found else None


def client(tracking_uri: str) -> MlflowClient:
    """The MLflow client for tracking and the model registry (the same store)."""
    from mlflow import MlflowClient  # importing mlflow takes seconds: only when the registry is asked

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registry_exists(tracking_uri: str) -> bool:
    """False for a sqlite store whose file is missing: asking MLflow would create an empty registry, and a
    question must change nothing."""
    return not tracking_uri.startswith("sqlite:///") or Path(tracking_uri.removeprefix("sqlite:///")).exists()


def _lookup(mlflow_client: Any, ref: str) -> Any:
    if ref.isdigit():
        return mlflow_client.get_model_version(MODEL_NAME, ref)
    return mlflow_client.get_model_version_by_alias(MODEL_NAME, ref)


def alias_version(tracking_uri: str, alias: str) -> str | None:
    """The version number `alias` points at, or None when there is no such alias (or no registry)."""
    if not registry_exists(tracking_uri):
        return None
    try:
        return str(_lookup(client(tracking_uri), alias).version)
    except Exception:  # noqa: BLE001 - MLflow raises several types for "no such alias / model"
        return None


def resolve(ref: str, settings: Settings | None = None, *, fallback: str | None = None) -> RegisteredModel:
    """Resolve a version number or alias of `crypto-policy` to its version, training cutoff and base model.

    With `fallback` (live sessions: `challenger`), an alias that names no version yet is replaced by
    that alias, and the note and the log say so. Nothing found is a UserInputError; a missing registry
    is not created."""
    settings = settings or get_settings()
    uri = settings.mlflow_tracking_uri
    found, error = _find(uri, ref)
    note = f"{MODEL_NAME}@{ref} (version {found.version})" if found is not None and not ref.isdigit() else ""
    if found is None and fallback and fallback != ref and not ref.isdigit():
        found, _ = _find(uri, fallback)
        if found is None:
            raise UserInputError(
                f"no version {ref!r} of {MODEL_NAME} and no {fallback!r} in the registry at {uri}: "
                "fine-tune first (crypto-pipeline finetune), or use provider 'rules'"
            )
        note = f"no {MODEL_NAME}@{ref} yet: falling back to the newest {fallback} (version {found.version})"
        log.warning(note)
    if found is None:
        raise UserInputError(f"no version {ref!r} of {MODEL_NAME}: {error}")
    tags = found.tags or {}
    cutoff = as_utc(tags["training_cutoff"]) if tags.get("training_cutoff") else None
    return RegisteredModel(
        str(found.version), cutoff, tags.get("base_model"), note or f"{MODEL_NAME} version {found.version}"
    )


def _find(uri: str, ref: str) -> tuple[Any, str]:
    """(the MLflow model version `ref` names, or None; why not)."""
    if not registry_exists(uri):
        return None, f"no MLflow registry at {uri}"
    try:
        return _lookup(client(uri), ref), ""
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing version
        return None, str(exc).splitlines()[0][:200]


def local_llm(found: RegisteredModel, settings: Settings | None = None, **options: Any) -> LocalLLM:
    """`found` as a LocalLLM: its adapter on the base it was trained on when that base is a folder here,
    else on the embedded base; journaled and cached under its version (`crypto-policy:N`). Loads lazily."""
    return LocalLLM(
        found.base_folder(),
        adapter=found.uri,
        model_version=found.model_version,
        settings=settings,
        **options,
    )


# --- the provider factory -----------------------------------------------------------------------

PROVIDER_SPECS = ("rules", "llm", "llm:REF", "openai", "llama-cpp", "swarm", "swarm:REF")
# Older spellings, kept so that no command or run config breaks: the CLI's `rule`, live's `local`.
SPELLINGS = {"rule": "rules", "local": "llm"}
_KINDS = ("rules", "llm", "openai", "llama-cpp", "swarm")


@dataclass(frozen=True)
class ProviderOptions:
    """What some providers need besides the spec (each field names the providers that read it)."""

    model: str | None = None  # llm: a folder, hub id or .gguf to use as the base; llama-cpp: a .gguf
    adapter: str | None = None  # llm: a LoRA folder or MLflow URI (a crypto-policy URI means llm:REF)
    constrained: bool = True  # llm, llama-cpp: force the decision grammar
    batch_size: int = 8  # llm
    openai_base_url: str | None = None  # openai: the server's .../v1 address
    openai_model: str = "gpt-4o-mini"
    openai_api_key_env: str | None = "OPENAI_API_KEY"
    schema_mode: str = "auto"


@dataclass(frozen=True)
class ProviderChoice:
    provider: DecisionProvider
    version: str | None  # the registered version it decides with (None: no registered version)
    note: str  # what was chosen, in words, any fallback included


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`spec` as (kind, registered ref or None); an unknown one is a UserInputError naming the choices."""
    kind, _, ref = spec.strip().partition(":")
    kind = SPELLINGS.get(kind, kind)
    if kind not in _KINDS or (ref and kind not in ("llm", "swarm")) or (":" in spec and not ref):
        raise UserInputError(
            f"unknown provider {spec!r}; expected one of {' | '.join(PROVIDER_SPECS)} "
            f"(REF: a version number or alias of {MODEL_NAME}; also {', '.join(SPELLINGS)})"
        )
    return kind, ref or None


def make_provider(
    spec: str,
    settings: Settings | None = None,
    *,
    ref: str | None = None,
    fallback: bool = False,
    options: ProviderOptions = ProviderOptions(),
    load: bool = False,
) -> ProviderChoice:
    """The provider `spec` names: `rules`; `llm` (the embedded base, or `options.model`/`options.adapter`);
    `llm:REF` (a registered version, by number or alias, on the base it was trained on); `openai`;
    `llama-cpp`; `swarm` or `swarm:REF` (that llm and the rules, voting with quorum 0.5).

    `ref` is the registered version `llm` and `swarm` use when the spec names none (a live session's
    `model_alias`); `fallback` lets an alias with no version yet fall back to the newest `challenger`,
    saying so in the note (live sessions). `load` loads model weights now rather than at the first
    decision. A missing version is a UserInputError before anything loads."""
    kind, spec_ref = parse_spec(spec)
    settings = settings or get_settings()
    ref = spec_ref or ref
    if kind == "rules":
        return ProviderChoice(RuleBased(), None, "rule-based provider")
    if kind == "openai":
        return ProviderChoice(*_openai(options))
    if kind == "llama-cpp":
        provider = LlamaCpp(options.model, constrained=options.constrained)
        return ProviderChoice(provider, None, f"llama.cpp on {provider.model_id}")
    member = _llm(ref, settings, fallback=fallback, options=options)
    if load and isinstance(member.provider, LocalLLM):
        member.provider.load()  # now, not at the first decision: a live replay would run past it
    if kind == "llm":
        return member
    swarm = Swarm([member.provider, RuleBased()], quorum=0.5)
    return ProviderChoice(swarm, member.version, f"swarm of {member.note} and the rules")


def _llm(ref: str | None, settings: Settings, *, fallback: bool, options: ProviderOptions) -> ProviderChoice:
    llm_options = {"constrained": options.constrained, "batch_size": options.batch_size}
    if ref is None and options.model is None:
        ref = ref_of_uri(options.adapter)  # a registered version named by its URI: the same rule
    if ref is not None:
        found = resolve(ref, settings, fallback=CHALLENGER if fallback else None)
        provider = local_llm(found, settings, **llm_options)
        return ProviderChoice(provider, found.version, f"{found.note} {found.base_note()}")
    if options.model is None and options.adapter is None:
        # "base": the decision cache's key for the embedded base model.
        provider = LocalLLM(model_version="base", settings=settings, **llm_options)
        return ProviderChoice(provider, None, "the embedded base model")
    provider = LocalLLM(options.model, adapter=options.adapter, settings=settings, **llm_options)
    adapter = f" with adapter {options.adapter}" if options.adapter else ""
    return ProviderChoice(provider, None, f"{provider.name}{adapter}")


def _openai(options: ProviderOptions) -> tuple[DecisionProvider, None, str]:
    # httpx takes a while to import; only this provider needs it.
    from crypto_pipeline.llm.openai_compat import OpenAICompatible

    base_url = options.openai_base_url
    if not base_url:
        raise UserInputError("provider 'openai' needs openai_base_url (the server's …/v1 address)")
    provider = OpenAICompatible(
        base_url,
        options.openai_model,
        api_key_env=options.openai_api_key_env,
        schema_mode=options.schema_mode,  # type: ignore[arg-type] - checked by OpenAICompatible
    )
    return provider, None, f"OpenAI-compatible {options.openai_model} at {base_url}"
