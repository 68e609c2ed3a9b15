"""What one exchange process is started with: `Settings.exchange`, completed from the rest of `Settings`.

The fields and their defaults live once, in `crypto_pipeline.config.ExchangeSettings`; this module only
resolves what those leave to the rest of the settings (data directory, SQLite file, keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr, model_validator

from crypto_pipeline.config import DEFAULT_CAPTURE_DIR, ExchangeSettings, FaultConfig, Settings

__all__ = ["DEFAULT_CAPTURE_DIR", "ExchangeConfig", "FaultConfig"]


class ExchangeConfig(ExchangeSettings):
    """Settings of one exchange process: keyword arguments, else `Settings().exchange` (environment
    `CRYPTO_PIPELINE_EXCHANGE__<FIELD>`), else derived from `Settings`: `data_dir` is the market data
    directory, `db_path` is `<warehouse_dir>/exchange.sqlite`, keys are ALPACA_API_KEY / ALPACA_SECRET_KEY."""

    data_dir: Path
    db_path: Path
    key: SecretStr
    secret: SecretStr

    @model_validator(mode="before")
    @classmethod
    def _complete_from_settings(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        settings = Settings()  # read now, not at import: the environment of this process at this moment
        # Only what the environment set explicitly, so that `model_fields_set` keeps meaning "asked for".
        merged = settings.exchange.model_dump(exclude_unset=True) | values
        derived = {
            "data_dir": settings.market_data_dir,
            "db_path": settings.warehouse_dir / "exchange.sqlite",
            "key": settings.alpaca_api_key or SecretStr(""),
            "secret": settings.alpaca_secret_key or SecretStr(""),
        }
        for name, value in derived.items():
            given = merged.get(name)
            if given is None or (isinstance(given, str) and not given.strip()):
                merged[name] = value
        return merged

    @property
    def credentials_set(self) -> bool:
        return bool(self.key.get_secret_value() and self.secret.get_secret_value())
