"""One settings object: the exchange's settings nest under `Settings.exchange` (env
`CRYPTO_PIPELINE_EXCHANGE__<FIELD>`), and `ExchangeConfig` completes them from the rest of `Settings`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

import crypto_pipeline.exchange
from crypto_pipeline.cli import app
from crypto_pipeline.config import DEFAULT_CAPTURE_DIR, ExchangeSettings, Settings
from crypto_pipeline.exchange import ExchangeConfig

EXCHANGE_ENV = ("CRYPTO_PIPELINE_EXCHANGE__", "ALPACA_", "CRYPTO_PIPELINE_ALPACA_")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment without exchange settings or keys, with its warehouse and data in `tmp_path`."""
    for name in list(os.environ):
        if name.startswith(EXCHANGE_ENV):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env file here
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    monkeypatch.setenv("CRYPTO_PIPELINE_MARKET_DATA_DIR", str(tmp_path / "bars"))
    return monkeypatch


def test_exchange_settings_nest_under_settings_with_a_double_underscore(env: pytest.MonkeyPatch) -> None:
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__PORT", "9123")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__SPEED", "0")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__FAULTS__LATENCY_MS", "25")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__CAPTURE_DIR", "")  # empty: no capture
    exchange = Settings().exchange
    assert (exchange.port, exchange.speed, exchange.faults.latency_ms) == (9123, 0.0, 25.0)
    assert exchange.capture_dir is None
    assert exchange.host == "127.0.0.1" and exchange.faults.rest_error_rate == 0.0  # the rest: defaults
    assert not hasattr(Settings(), "exchange_port")  # one place for the port, not two


def test_a_bad_nested_value_is_refused_with_its_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__PORT", "70000")
    with pytest.raises(ValidationError, match="exchange.port"):
        Settings()


def test_exchange_config_derives_data_db_and_keys_from_settings(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("ALPACA_API_KEY", "env-key")
    env.setenv("ALPACA_SECRET_KEY", "env-secret")
    config = ExchangeConfig()
    assert config.data_dir == tmp_path / "bars"
    assert config.db_path == tmp_path / "wh" / "exchange.sqlite"  # in the warehouse, wherever that is
    assert config.key.get_secret_value() == "env-key" and config.credentials_set
    assert config.capture_dir == DEFAULT_CAPTURE_DIR and "capture_dir" not in config.model_fields_set


def test_arguments_win_over_the_environment_which_wins_over_defaults(env: pytest.MonkeyPatch) -> None:
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__PORT", "9123")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__DB_PATH", "/elsewhere/ex.sqlite")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__KEY", "nested-key")
    env.setenv("ALPACA_API_KEY", "alpaca-key")
    from_env = ExchangeConfig(secret="s")
    assert from_env.port == 9123 and from_env.db_path == Path("/elsewhere/ex.sqlite")
    assert from_env.key.get_secret_value() == "nested-key"  # the exchange's own key before Alpaca's
    given = ExchangeConfig(port=0, db_path="/given.sqlite", key="k", secret="s", start="2024-09-07")
    assert (given.port, given.db_path, given.key.get_secret_value()) == (0, Path("/given.sqlite"), "k")
    assert given.start is not None and given.start.isoformat() == "2024-09-07T00:00:00+00:00"


def test_the_defaults_live_once_in_settings() -> None:
    defaults = ExchangeSettings()
    assert (defaults.host, defaults.port, defaults.speed) == ("127.0.0.1", 8765, 1.0)
    assert defaults.data_dir is None and defaults.db_path is None  # derived, never a path under the repo
    assert set(ExchangeConfig.model_fields) == set(ExchangeSettings.model_fields)
    with pytest.raises(ValidationError, match="stepped clock"):
        ExchangeSettings(stepped=True, speed=1.0)


def test_the_exchange_command_passes_its_options_and_leaves_the_rest_to_settings(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[ExchangeConfig] = []
    env.setattr(crypto_pipeline.exchange, "run_exchange", lambda config, announce: started.append(config))
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__PORT", "9123")
    env.setenv("CRYPTO_PIPELINE_EXCHANGE__SPEED", "60")
    runner = CliRunner()
    options = ["--host", "0.0.0.0", "--data", str(tmp_path / "d"), "--start", "2024-06-01", "--key", "k"]
    result = runner.invoke(app, ["exchange", *options, "--secret", "s", "--speed", "0", "--reset"])
    assert result.exit_code == 0, result.output
    config = started[-1]
    assert (config.host, config.data_dir, config.speed, config.reset) == ("0.0.0.0", tmp_path / "d", 0.0, True)
    assert config.start is not None and config.start.isoformat() == "2024-06-01T00:00:00+00:00"
    assert config.port == 9123  # not given: from Settings.exchange
    assert config.db_path == tmp_path / "wh" / "exchange.sqlite"

    result = runner.invoke(app, ["exchange", "--key", "k", "--secret", "s", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert (started[-1].port, started[-1].speed, started[-1].host) == (0, 60.0, "127.0.0.1")
