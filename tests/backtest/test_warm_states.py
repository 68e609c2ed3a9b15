"""Warm states: a backtest loads the history its states need before the first decision, and the state of
a symbol at an hour is the same prompt, by hash, from the backtest, the dataset (the warehouse's
`market_states`) and a live session's window (`live.states`), none of them reading a bar after the hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from crypto_pipeline.backtest.walkforward import MarketData, WalkForwardConfig
from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.llm.prompts import build_user_prompt, prompt_hash
from crypto_pipeline.state.build import STATE_LOOKBACK_DAYS, state_from_row

pytestmark = pytest.mark.requires_data("binance-spot-2024")
DATA = SHARED_MARKET_DATA / "binance-spot-2024"
SYMBOL = "BTC/USDT"
AT = datetime(2024, 3, 10, tzinfo=UTC)  # a day boundary: the warehouse builds whole days


def _hash(row: dict) -> str:
    return prompt_hash(build_user_prompt(state_from_row(row)))


@pytest.fixture(scope="module")
def data() -> MarketData:
    return MarketData.load(
        WalkForwardConfig(symbols=(SYMBOL,), start="2024-03-10", end="2024-03-20", data_dir=DATA)
    )


def test_the_first_decision_of_a_short_backtest_has_warm_daily_indicators(data: MarketData) -> None:
    config = WalkForwardConfig(symbols=(SYMBOL,), start="2024-03-10", end="2024-03-20", data_dir=DATA)
    assert data.bars["timestamp"].min() <= AT - timedelta(days=STATE_LOOKBACK_DAYS)
    [row] = data.states(config, [AT]).iter_rows(named=True)
    state = state_from_row(row)
    assert state.timeframes["1d"].rsi_14 is not None and state.timeframes["4h"].rsi_14 is not None


def test_a_warm_state_reads_nothing_after_its_hour(data: MarketData) -> None:
    """The state at AT from the loaded bars equals the one from bars cut at AT, and from bars whose
    future is shuffled: the history before the span warms it, nothing after AT reaches it."""
    config = WalkForwardConfig(symbols=(SYMBOL,), start="2024-03-10", end="2024-03-20", data_dir=DATA)
    closed = pl.col("timestamp") + timedelta(hours=1) <= AT
    cut = MarketData(data.bars.filter(closed))
    future = data.bars.filter(~closed)
    values = ["open", "high", "low", "close", "volume"]
    shuffled = pl.concat(
        [future.drop(values), future.select(values).sample(fraction=1.0, shuffle=True, seed=1)],
        how="horizontal",
    )
    noisy = MarketData(pl.concat([data.bars.filter(closed), shuffled.select(data.bars.columns)]))
    full = data.states(config, [AT]).row(0, named=True)
    assert _hash(full) == _hash(cut.states(config, [AT]).row(0, named=True))
    assert _hash(full) == _hash(noisy.states(config, [AT]).row(0, named=True))


def test_backtest_dataset_and_live_show_the_same_prompt_for_the_same_hour(data: MarketData, tmp_path) -> None:
    from crypto_pipeline.features import build_features
    from crypto_pipeline.ingest import build_bars, ingest_raw
    from crypto_pipeline.live.bars import max_bars_for
    from crypto_pipeline.live.states import states_at
    from crypto_pipeline.market.sources import RecordedSource
    from crypto_pipeline.market.timeframes import Timeframe
    from crypto_pipeline.state.build import build_market_states
    from crypto_pipeline.warehouse import Warehouse

    config = WalkForwardConfig(symbols=(SYMBOL,), start="2024-03-10", end="2024-03-20", data_dir=DATA)
    backtest = _hash(data.states(config, [AT]).row(0, named=True))

    # Live: the session's buffer holds the newest `lookback_days` of base bars closed by the hour.
    base = Timeframe.parse("1h")
    buffer = (
        data.bars.filter(pl.col("timestamp") + base.duration <= AT)
        .sort("timestamp")
        .tail(max_bars_for(base, STATE_LOOKBACK_DAYS))
    )
    states, missing = states_at(buffer, base, [SYMBOL], AT)
    assert not missing
    live = prompt_hash(build_user_prompt(states[SYMBOL]))

    # The dataset: the warehouse's market_states, built from the same days of bars by ingest.
    warehouse = Warehouse(tmp_path / "wh")
    first_day, last_day = (AT - timedelta(days=STATE_LOOKBACK_DAYS)).date(), (AT - timedelta(days=1)).date()
    ingest_raw(RecordedSource(DATA), warehouse, [SYMBOL], "1h", first_day, last_day, progress=False)
    build_bars(warehouse, [SYMBOL], "1h", ["4h", "1d"], first_day, last_day, now=AT, progress=False)
    build_features(warehouse, [SYMBOL], ["1h", "4h", "1d"], first_day, last_day)
    build_market_states(warehouse, [SYMBOL], last_day, last_day)
    stored = warehouse.read("market_states", symbols=[SYMBOL]).filter(pl.col("at") == AT)
    assert stored.height == 1
    dataset = stored["prompt_hash"][0]

    assert backtest == live == dataset
