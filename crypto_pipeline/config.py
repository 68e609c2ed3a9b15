"""One pydantic-settings `Settings` object; every default runs offline on the recorded data."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared sits beside the repository checkout (CI clones main next to it).
SHARED_MARKET_DATA = REPO_ROOT.parent / "shared" / "market-data"

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


class Settings(BaseSettings):
    """Project configuration: environment variables prefixed `CRYPTO_PIPELINE_`, or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="CRYPTO_PIPELINE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- data -----------------------------------------------------------------------------
    market_data_dir: Path = Field(
        default=SHARED_MARKET_DATA / "binance-spot-2024",
        description="Directory of recorded Parquet bars (bars_<tf>.parquet) used by the offline default.",
    )
    warehouse_dir: Path = Field(default=REPO_ROOT / "warehouse", description="DuckDB + Parquet warehouse root.")
    mlruns_dir: Path = Field(default=REPO_ROOT / "mlruns", description="MLflow tracking/registry root.")
    symbols: list[str] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    base_timeframe: str = Field(default="5m", description="Timeframe ingested; coarser ones are resampled.")
    timeframes: list[str] = Field(default_factory=lambda: ["15m", "1h", "4h", "1d"])
    # Day ranges include both ends everywhere (start/end, partitions_start/partitions_end, a partition range).
    start: str = Field(default="2024-01-01", description="First day (UTC) ingested by default.")
    end: str = Field(default="2024-09-06", description="Last day (UTC, inclusive) ingested by default.")
    partitions_start: str = Field(default="2024-01-01", description="First daily partition of the Dagster assets.")
    partitions_end: str | None = Field(
        default="2024-09-06",
        description="Last daily partition (inclusive, like `end`); empty for open-ended live data.",
    )
    max_gap_ratio: float = Field(default=0.02, description="Asset check: largest tolerated share of missing bars.")

    # --- sources --------------------------------------------------------------------------
    source: Literal["recorded", "alpaca"] = Field(
        default="recorded", description="'recorded' imports Parquet files; 'alpaca' uses alpaca-py's REST client."
    )
    alpaca_data_url: str | None = Field(
        default=None, description="url_override for CryptoHistoricalDataClient (None: Alpaca's own host)."
    )
    alpaca_trading_url: str | None = Field(default=None, description="url_override for TradingClient.")
    alpaca_paper: bool = True
    live_trading_enabled: bool = Field(
        default=False,
        description="The one switch that lets the live loop trade real money (venue alpaca_live); off by default.",
    )

    # Secrets: read from the conventional Alpaca variable names as well as the prefixed ones.
    alpaca_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ALPACA_API_KEY", "CRYPTO_PIPELINE_ALPACA_API_KEY")
    )
    alpaca_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ALPACA_SECRET_KEY", "CRYPTO_PIPELINE_ALPACA_SECRET_KEY")
    )

    # --- local exchange -------------------------------------------------------------------
    exchange_host: str = "127.0.0.1"
    exchange_port: int = 8765

    @property
    def duckdb_path(self) -> Path:
        return self.warehouse_dir / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.warehouse_dir / "models"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(...)` instead)."""
    return Settings()
