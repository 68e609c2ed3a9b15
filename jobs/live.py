"""The `live_paper` job: one bounded live session (`crypto_pipeline.live.run_live`) from run config,
runnable with `dagster job execute -m definitions -j live_paper`, `dagster job launch -j live_paper`
(a daemon running) or from the launchpad."""

from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.resources import WarehouseResource
from crypto_pipeline.config import DEFAULT_SYMBOLS, get_settings
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.run import EmbeddedExchange, flatten_venue, run_live


class LivePaperConfig(dg.Config):
    symbols: list[str] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    timeframe: str = Field("5m", description="Bar timeframe the loop buffers.")
    decision_interval: str = Field("1h", description="Decide at every close of this interval.")
    provider: str = Field(
        "auto",
        description="'auto' (the default): crypto-policy@champion; without a champion the rules, with the "
        "newest challenger in shadow. 'rules', 'local' (crypto-policy at model_alias), 'openai' (a "
        "chat-completions server) or 'swarm' (crypto-policy and the rules, voting).",
    )
    shadows: list[str] | None = Field(
        None,
        description="crypto-policy versions or aliases deciding in shadow (no order sent); None: with "
        "'auto', the newest challenger when it is not the champion; [] for none.",
    )
    model_alias: str = Field("champion", description="crypto-policy alias; no champion: newest challenger.")
    dtype: str | None = Field(
        None,
        description="Local models' number format: auto | float32 | bfloat16; empty: CRYPTO_PIPELINE_LLM_DTYPE.",
    )
    openai_base_url: str | None = Field(None, description="openai: the server's base URL (…/v1).")
    openai_model: str = Field("gpt-4o-mini", description="openai: the model name the server expects.")
    openai_api_key_env: str = Field("OPENAI_API_KEY", description="openai: the variable holding the key.")
    # Empty: from Settings when the run starts (CRYPTO_PIPELINE_LIVE_MAX_RUNTIME_S, default 120 s;
    # CRYPTO_PIPELINE_LIVE_MAX_DECISIONS, default none), so a run launched without run config is bounded too.
    max_runtime_s: float | None = Field(None, description="Wall-clock bound (s); empty: Settings, 120.")
    max_decisions: int | None = Field(None, description="Decision times; empty: Settings, none.")
    venue: str = Field(
        "local", description="local, alpaca_paper or alpaca_live (needs the explicit setting)."
    )
    session_id: str | None = Field(None, description="Journal and order-id name (default: the run id).")
    lookback_days: int = 30
    order_book_in_prompt: bool = Field(
        False,
        description="Show the live order book (spread, imbalance) in the prompt. Off by default: models are "
        "trained and judged on historical bars, which have no book (docs/live.md).",
    )
    max_spread_bps: float | None = Field(
        None, description="Risk rule: refuse opening when the live book's spread is wider (bps)."
    )
    exchange_url: str | None = Field(None, description="local venue: a running exchange (default: Settings).")
    start_exchange: bool = Field(True, description="local venue: start an exchange inside the run.")
    exchange_start: str | None = Field("2024-08-01", description="Embedded exchange: replay start.")
    exchange_speed: float = Field(3600.0, description="Embedded exchange: market seconds per second.")
    exchange_db: str | None = Field(None, description="Embedded exchange: its SQLite account file.")
    exchange_reset: bool = Field(False, description="Embedded exchange: start with a fresh paper account.")


@dg.op(description="Trade one bounded session: stream -> state -> decision -> risk -> orders -> journal.")
def live_paper_session(
    context: dg.OpExecutionContext, config: LivePaperConfig, warehouse: WarehouseResource
) -> dg.Output[dict]:
    settings = get_settings().model_copy(update={"warehouse_dir": warehouse.get().root})
    live = LiveConfig(
        session_id=config.session_id or context.run_id[:8],
        symbols=tuple(config.symbols),
        timeframe=config.timeframe,
        decision_interval=config.decision_interval,
        provider=config.provider,  # type: ignore[arg-type]
        model_alias=config.model_alias,
        dtype=config.dtype or None,  # type: ignore[arg-type]
        shadows=tuple(config.shadows) if config.shadows is not None else None,
        openai_base_url=config.openai_base_url,
        openai_model=config.openai_model,
        openai_api_key_env=config.openai_api_key_env,
        max_runtime_s=settings.live_max_runtime_s if config.max_runtime_s is None else config.max_runtime_s,
        max_decisions=settings.live_max_decisions if config.max_decisions is None else config.max_decisions,
        venue=config.venue,  # type: ignore[arg-type]
        lookback_days=config.lookback_days,
        order_book_in_prompt=config.order_book_in_prompt,
        max_spread_bps=config.max_spread_bps,
    )
    embedded = (
        EmbeddedExchange(
            start=config.exchange_start,
            speed=config.exchange_speed,
            db_path=Path(config.exchange_db) if config.exchange_db else None,
            reset=config.exchange_reset,
        )
        if config.venue == "local" and config.start_exchange
        else None
    )
    report = run_live(live, settings, exchange_url=config.exchange_url, embedded=embedded)
    context.log.info(report.summary())
    # What traded and what ran in shadow, where the run list shows it.
    context.instance.add_run_tags(
        context.run_id,
        {
            "crypto_pipeline/provider": report.provider,
            "crypto_pipeline/model": (report.model_version or "none")[:60],
            "crypto_pipeline/provider_note": report.provider_note[:200],
            "crypto_pipeline/shadows": ",".join(s.run_id for s in report.shadows)[:200] or "none",
        },
    )
    summary = {k: v for k, v in vars(report).items() if k not in ("decision_to_order_ms", "shadows")}
    summary["shadows"] = [vars(s) for s in report.shadows]
    if report.decision_to_order_ms:
        p50, p99 = np.percentile(report.decision_to_order_ms, [50, 99])
        summary |= {"decision_to_order_p50_ms": float(p50), "decision_to_order_p99_ms": float(p99)}
    metadata = {k: v for k, v in summary.items() if v is not None and k != "shadows"}
    metadata |= {f"shadow {s.run_id}": s.summary() for s in report.shadows}
    return dg.Output(summary, metadata=metadata)


# One op: in process, the run starts trading without a step process importing the definitions again.
@dg.job(
    description="A bounded paper-trading session on the local exchange (or Alpaca paper).",
    executor_def=dg.in_process_executor,
)
def live_paper() -> None:
    live_paper_session()


class FlattenConfig(dg.Config):
    venue: str = Field(
        "local", description="local, alpaca_paper or alpaca_live (needs the explicit setting)."
    )
    exchange_url: str | None = Field(
        None, description="local venue: the running exchange (default: Settings)."
    )


@dg.op(description="Cancel every open order and close every position at the venue.")
def flatten_account(config: FlattenConfig, warehouse: WarehouseResource) -> dg.Output[int]:
    settings = get_settings().model_copy(update={"warehouse_dir": warehouse.get().root})
    closed = flatten_venue(settings, config.venue, config.exchange_url)
    return dg.Output(closed, metadata={"positions_closed": closed})


@dg.job(description="The kill switch when no live session is running: flatten the account.")
def kill_switch() -> None:
    flatten_account()
