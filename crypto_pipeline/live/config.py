"""What one live session is started with: symbols, bar timeframe and decision interval, the model and
provider, its bounds (runtime, decisions) and the venue. Secrets are not part of it: the keys come from
the environment (`Settings`) when the session connects."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crypto_pipeline.config import DEFAULT_SYMBOLS, LlmDtype
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.registry import CHAMPION, MODEL_NAME

Venue = Literal["local", "alpaca_paper", "alpaca_live"]
ProviderName = Literal["auto", "rules", "local", "openai", "swarm"]


class LiveConfig(BaseModel):
    """One live session. `timeframe` is the bar the loop buffers (stream bars are stored at it; finer
    ones are refreshed from REST); decisions are taken at every close of `decision_interval`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: str = Field(
        "live",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Names the session in the journal and in every client_order_id; reuse it to resume.",
    )
    symbols: tuple[str, ...] = Field(default=DEFAULT_SYMBOLS, min_length=1)
    timeframe: str = "5m"
    decision_interval: str = "1h"
    provider: ProviderName = Field(
        "auto",
        description=f"'auto': {MODEL_NAME}@{CHAMPION} trades; without one the rules trade and the newest "
        "challenger runs in shadow (said in the log, the journal's sessions row and the summary). 'local': "
        "the version at `model_alias`; 'rules'; 'openai'; 'swarm' (the version and the rules, voting).",
    )
    shadows: tuple[str, ...] | None = Field(
        None,
        description=f"Versions or aliases of {MODEL_NAME} that decide in shadow (no order sent). None: with "
        "provider 'auto', the newest challenger when it is not the champion; otherwise none.",
    )
    model_alias: str = Field(
        CHAMPION,
        description=f"Alias of {MODEL_NAME} for providers 'local' and 'swarm' "
        "(none there yet: the newest challenger, said in the note).",
    )
    dtype: LlmDtype | None = Field(
        None,
        description="Number format of the session's local models (trading and shadows): auto | float32 | "
        "bfloat16; None: the setting CRYPTO_PIPELINE_LLM_DTYPE (default auto).",
    )
    openai_base_url: str | None = Field(
        None, description="Provider 'openai': the chat-completions server's base URL (…/v1)."
    )
    openai_model: str = Field("gpt-4o-mini", description="Provider 'openai': the model name it serves.")
    openai_api_key_env: str = Field(
        "OPENAI_API_KEY", description="Provider 'openai': the environment variable holding its key."
    )
    max_runtime_s: float = Field(120.0, gt=0)
    max_decisions: int | None = Field(None, ge=1, description="Stop after this many decision batches.")
    venue: Venue = "local"
    lookback_days: int = Field(30, ge=2, description="History loaded before the first decision.")
    grace_s: float = Field(
        2.0, ge=0, description="Wall seconds to wait for lagging symbols at a decision time."
    )
    stale_after_s: float = Field(
        30.0, gt=0, description="Wall seconds without any bar after which the feed counts as stale."
    )
    submit_attempts: int = Field(5, ge=1)
    # Quotes and order books are always streamed, kept, journaled (`decisions.order_book`) and watched;
    # the prompt shows the book only when asked, because the states a model is trained and judged on
    # (warehouse, dataset, backtests) come from historical bars, which have no book: a book line would be
    # a prompt the model never saw. See docs/live.md, "Quotes and order books".
    order_book_in_prompt: bool = Field(
        False, description="Show the live order book (spread, imbalance) in the model's prompt."
    )
    max_spread_bps: float | None = Field(
        None, gt=0, description="Risk rule: refuse opening when the live book's spread is wider (bps)."
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        return tuple(value) if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _interval_is_a_multiple(self) -> LiveConfig:
        base, decide = Timeframe.parse(self.timeframe), Timeframe.parse(self.decision_interval)
        if decide.duration < base.duration or decide.duration % base.duration:
            raise ValueError(
                f"decision_interval {decide.value} must be a whole multiple of timeframe {base.value}"
            )
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols repeat: {list(self.symbols)}")
        return self

    @property
    def base(self) -> Timeframe:
        return Timeframe.parse(self.timeframe)

    @property
    def interval(self) -> Timeframe:
        return Timeframe.parse(self.decision_interval)
