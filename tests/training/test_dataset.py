"""Labels, purged+embargoed splits and the sft_dataset: hand-made series with known answers, then the
real recorded BTC data, and each blocking check failing on a dataset broken on purpose."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from crypto_pipeline.llm.decision import Action, parse_decision
from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT, build_user_prompt, prompt_hash
from crypto_pipeline.state.build import state_from_row
from crypto_pipeline.training.dataset import (
    COLUMNS,
    DatasetConfig,
    DatasetError,
    SftDataset,
    build_sft_dataset,
    check_classes_per_split,
    check_prompts_point_in_time,
    check_responses_parse,
    read_sft_dataset,
    save_hf_dataset,
    write_sft_dataset,
)
from crypto_pipeline.training.labels import Thresholds, fit_thresholds, forward_returns
from crypto_pipeline.training.splits import SplitBoundaries, assign_splits, check_no_split_leakage
from crypto_pipeline.warehouse import Warehouse

T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def hourly_bars(closes: list[float], symbol: str = "X/USDT") -> pl.DataFrame:
    """Bar i opens at T0 + i h with open = the previous close (the first opens at its close)."""
    opens = [closes[0], *closes[:-1]]
    return pl.DataFrame(
        {
            "symbol": [symbol] * len(closes),
            "timestamp": [T0 + i * H for i in range(len(closes))],
            "open": opens,
            "close": closes,
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


# --- labels on hand-made series ------------------------------------------------------------------------


def test_forward_return_runs_from_next_open_to_close_at_label_end() -> None:
    closes = [100.0 + i for i in range(10)]  # bar i: open 99+i (100 for i=0), close 100+i
    bars = hourly_bars(closes)
    points = pl.DataFrame({"symbol": ["X/USDT"], "at": [T0 + 2 * H]})
    out = forward_returns(bars, points, timedelta(hours=3)).row(0, named=True)
    # Decided at the close of bar 1 (T0+2h): entry = open of bar 2 (101), exit = close of bar 4 (104).
    assert out["label_end"] == T0 + 5 * H
    assert out["entry_price"] == 101.0 and out["exit_price"] == 104.0
    assert out["forward_return"] == pytest.approx(104 / 101 - 1)


def test_labels_never_read_after_label_end() -> None:
    closes = [100.0 + (i % 7) for i in range(40)]
    points = pl.DataFrame({"symbol": ["X/USDT"] * 10, "at": [T0 + (5 + i) * H for i in range(10)]})
    horizon = timedelta(hours=4)
    base = forward_returns(hourly_bars(closes), points, horizon)
    for row in base.iter_rows(named=True):
        # Changing every bar that closes after label_end leaves the label as it was...
        changed = [c if T0 + (i + 1) * H <= row["label_end"] else c * 3 for i, c in enumerate(closes)]
        again = forward_returns(hourly_bars(changed), points, horizon).filter(pl.col("at") == row["at"])
        assert again["forward_return"][0] == row["forward_return"]
    # ...while changing the bar that closes at label_end does change it (the test can fail).
    first = base.row(0, named=True)
    moved = [c * 2 if T0 + (i + 1) * H == first["label_end"] else c for i, c in enumerate(closes)]
    again = forward_returns(hourly_bars(moved), points, horizon).filter(pl.col("at") == first["at"])
    assert again["forward_return"][0] != first["forward_return"]


def test_missing_bar_gives_no_label() -> None:
    bars = hourly_bars([100.0 + i for i in range(10)]).filter(pl.col("timestamp") != T0 + 4 * H)
    points = pl.DataFrame({"symbol": ["X/USDT"], "at": [T0 + 2 * H]})
    assert forward_returns(bars, points, timedelta(hours=3))["forward_return"][0] is None


def test_horizon_must_be_whole_bars() -> None:
    points = pl.DataFrame({"symbol": ["X/USDT"], "at": [T0]})
    with pytest.raises(ValueError, match="multiple"):
        forward_returns(hourly_bars([1.0, 2.0]), points, timedelta(minutes=90))


def test_thresholds_are_train_quantiles() -> None:
    scores = pl.Series([float(i) for i in range(1, 10)])  # 1..9
    t = fit_thresholds(scores, 1 / 3, 1 / 3)
    assert t.sell_below == pytest.approx(3.6667, abs=1e-3) and t.buy_above == pytest.approx(6.3333, abs=1e-3)
    with pytest.raises(ValueError):
        Thresholds(1.0, 1.0)


# --- splits on hand-made points ------------------------------------------------------------------------


def hand_points(hours: int, horizon: timedelta) -> pl.DataFrame:
    ats = [T0 + i * H for i in range(hours)]
    return pl.DataFrame(
        {"symbol": ["X/USDT"] * hours, "at": ats, "label_end": [a + horizon for a in ats]},
        schema_overrides={"at": pl.Datetime("us", "UTC"), "label_end": pl.Datetime("us", "UTC")},
    )


def test_purge_and_embargo_known_counts() -> None:
    horizon = timedelta(hours=4)
    b = SplitBoundaries(T0 + 20 * H, T0 + 40 * H, T0 + 60 * H, embargo=timedelta(hours=5))
    split, report = assign_splits(hand_points(60, horizon), b, horizon)
    # train: at 0..16 (label ends <= 20); purged: at 17..19; embargoed: at 20..24.
    # validation: at 25..36; purged 37..39; embargoed 40..44; test: at 45..56; after cutoff: 57..59.
    assert report.kept == {"train": 17, "validation": 12, "test": 12}
    assert (report.purged, report.embargoed, report.after_cutoff) == (6, 10, 3)
    by = {s: split.filter(pl.col("split") == s) for s in ("train", "validation", "test")}
    assert by["train"]["at"].max() == T0 + 16 * H and by["validation"]["at"].min() == T0 + 25 * H
    assert by["test"]["at"].min() == T0 + 45 * H and by["test"]["label_end"].max() == T0 + 60 * H
    assert check_no_split_leakage(split).passed


def test_embargo_shorter_than_horizon_is_refused() -> None:
    horizon = timedelta(hours=4)
    b = SplitBoundaries(T0 + 20 * H, T0 + 40 * H, T0 + 60 * H, embargo=timedelta(hours=3))
    with pytest.raises(ValueError, match="embargo"):
        assign_splits(hand_points(60, horizon), b, horizon)
    with pytest.raises(DatasetError, match="embargo"):
        build_sft_dataset(pl.DataFrame(), pl.DataFrame(), DatasetConfig(horizon_hours=24, embargo_hours=12))


def test_leakage_check_fails_on_unpurged_split() -> None:
    horizon = timedelta(hours=4)
    points = hand_points(40, horizon)
    # A naive split at hour 20 without purge or embargo: train labels reach into validation.
    naive = points.with_columns(
        pl.when(pl.col("at") < T0 + 20 * H)
        .then(pl.lit("train"))
        .otherwise(pl.lit("validation"))
        .alias("split")
    )
    result = check_no_split_leakage(naive)
    assert not result.passed and result.count == 4  # at 16..19 end at 20..23 >= 20


# --- the dataset on recorded data ----------------------------------------------------------------------


def test_dataset_rows_are_what_the_decision_layer_sends(
    btc_dataset: SftDataset, btc_states: pl.DataFrame
) -> None:
    frame = btc_dataset.frame
    assert frame.columns == list(COLUMNS)
    assert frame.select("symbol", "at").is_duplicated().sum() == 0
    assert set(frame["prompt_version"]) == {PROMPT_VERSION} and set(frame["system_prompt"]) == {SYSTEM_PROMPT}
    states = {(r["symbol"], r["at"]): r for r in btc_states.iter_rows(named=True)}
    for row in frame.head(50).iter_rows(named=True):
        user = build_user_prompt(state_from_row(states[(row["symbol"], row["at"])]))
        assert row["prompt"] == user
        assert row["prompt_hash"] == prompt_hash(user, SYSTEM_PROMPT)
        decision = parse_decision(row["response"])
        assert decision.valid and decision.action == Action(row["action"])
        assert 0 < len(decision.reasoning) <= 100
    # Deterministic: the same inputs give the same dataset.
    assert btc_dataset.card()["fingerprint"] == btc_dataset.card()["fingerprint"]


def test_thresholds_fitted_on_train_only(btc_states: pl.DataFrame, btc_bars_1h: pl.DataFrame) -> None:
    from tests.training.conftest import SMALL_CONFIG

    base = build_sft_dataset(btc_states, btc_bars_1h, SMALL_CONFIG)
    # Tripling every price move after the train split changes validation/test labels' returns, never the
    # thresholds (fitted on train only).
    train_end = base.boundaries.train_end
    bars = btc_bars_1h.with_columns(
        pl.when(pl.col("timestamp") >= train_end)
        .then(pl.col("open") * 1.5)
        .otherwise(pl.col("open"))
        .alias("open")
    )
    other = build_sft_dataset(btc_states, bars, SMALL_CONFIG)
    assert other.thresholds == base.thresholds
    assert not other.frame.filter(pl.col("split") == "test")["forward_return"].equals(
        base.frame.filter(pl.col("split") == "test")["forward_return"]
    )


def test_dataset_splits_classes_and_card(btc_dataset: SftDataset) -> None:
    card = btc_dataset.card()
    assert check_no_split_leakage(btc_dataset.frame).passed
    assert check_classes_per_split(btc_dataset.frame).passed
    assert card["labels"] == "triple_barrier"
    assert all(n > 0 for n in card["splits"]["train"]["classes"].values())
    assert card["removed"]["purged"] > 0 and card["removed"]["embargoed"] > 0
    assert "| train |" in btc_dataset.card_markdown()


def test_responses_parse_check(btc_dataset: SftDataset) -> None:
    frame = btc_dataset.frame
    assert check_responses_parse(frame).passed
    broken = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.col("response").str.replace('"action": "\\w+"', '"action": "MAYBE"'))
        .when(pl.int_range(pl.len()) == 5)
        .then(pl.col("response").str.replace('"confidence": ', '"confidence":  '))
        .otherwise(pl.col("response"))
        .alias("response")
    )
    result = check_responses_parse(broken)
    assert not result.passed and result.count == 2


def test_classes_check_fails_when_a_split_lacks_a_class(btc_dataset: SftDataset) -> None:
    frame = btc_dataset.frame.filter(~((pl.col("split") == "validation") & (pl.col("action") == "BUY")))
    result = check_classes_per_split(frame)
    assert not result.passed and result.sample.to_dicts() == [{"split": "validation", "missing_class": "BUY"}]


def test_prompts_point_in_time_check(btc_dataset: SftDataset, btc_features: pl.DataFrame) -> None:
    frame = btc_dataset.frame
    assert check_prompts_point_in_time(frame, btc_features, sample_size=6).passed
    # A prompt built from the state one hour later (it knows the next bar) is caught.
    shifted = frame.with_columns(pl.col("prompt").shift(-1).fill_null(pl.col("prompt")))
    result = check_prompts_point_in_time(shifted, btc_features, sample_size=6)
    assert not result.passed and result.count >= 5


def test_empty_states_raise_clear_error(btc_bars_1h: pl.DataFrame, btc_states: pl.DataFrame) -> None:
    with pytest.raises(DatasetError, match="no usable examples"):
        build_sft_dataset(btc_states.head(0), btc_bars_1h)


def test_warehouse_and_hf_round_trip(btc_dataset: SftDataset, tmp_path) -> None:
    from datasets import load_from_disk

    wh = Warehouse(tmp_path / "warehouse")
    frame = btc_dataset.frame
    assert write_sft_dataset(wh, frame) == frame.height
    back = read_sft_dataset(wh)
    assert back.equals(frame.sort("at", "symbol"))
    with wh.connect(read_only=True) as con:
        assert con.execute("select count(*) from sft_dataset").fetchone()[0] == frame.height
    # Rewriting a smaller dataset replaces the table whole.
    write_sft_dataset(wh, frame.head(10))
    assert read_sft_dataset(wh).height == 10

    folder = save_hf_dataset(frame, tmp_path / "hf", btc_dataset.card())
    hf = load_from_disk(str(folder))
    assert len(hf["train"]) == btc_dataset.report.kept["train"]
    chat = hf["validation"][0]["messages"]
    assert [m["role"] for m in chat] == ["system", "user", "assistant"]
    first_val = frame.filter(pl.col("split") == "validation").row(0, named=True)
    assert chat[1]["content"] == first_val["prompt"] and chat[2]["content"] == first_val["response"]
    assert (folder / "README.md").is_file() and (folder / "card.json").is_file()


def test_return_terciles_are_balanced_on_train(btc_states: pl.DataFrame, btc_bars_1h: pl.DataFrame) -> None:
    from tests.training.conftest import SMALL_CONFIG

    terciles = build_sft_dataset(
        btc_states, btc_bars_1h, SMALL_CONFIG.model_copy(update={"labels": "return_terciles"})
    )
    train = terciles.card()["splits"]["train"]["classes"]
    assert max(train.values()) - min(train.values()) <= 2  # quantile thresholds: balanced on train


def _path_bars(highs: list[float], lows: list[float]) -> pl.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    n = len(highs)
    return pl.DataFrame(
        {
            "symbol": ["X/USDT"] * n,
            "timestamp": [start + timedelta(hours=i) for i in range(n)],
            "open": [100.0] * n,
            "high": highs,
            "low": lows,
            "close": [100.0] * n,
        }
    )


def test_triple_barrier_takes_the_first_exit_and_reads_no_bar_after_the_horizon() -> None:
    from crypto_pipeline.training.labels import triple_barrier

    at = datetime(2024, 1, 1, tzinfo=UTC)
    point = pl.DataFrame({"symbol": ["X/USDT"], "at": [at], "atr_pct": [1.0]})  # take 104, stop 98

    def label(highs: list[float], lows: list[float]) -> str | None:
        return triple_barrier(_path_bars(highs, lows), point, timedelta(hours=4))["barrier"][0]

    calm = [100.5] * 6, [99.5] * 6
    assert label(*calm) == "HOLD"
    assert label([100.5, 104.5, 100.5, 100.5, 100.5, 100.5], [99.5, 99.5, 97.0, 99.5, 99.5, 99.5]) == "BUY"
    assert label([100.5, 100.5, 104.5, 100.5, 100.5, 100.5], [99.5, 97.5, 99.5, 99.5, 99.5, 99.5]) == "SELL"
    # One bar touching both: the stop is assumed first (a bar does not say which came first).
    assert label([104.5] + [100.5] * 5, [97.5] + [99.5] * 5) == "SELL"
    # A take profit in the 5th bar is after the 4-hour window: not read.
    assert label([100.5] * 4 + [110.0, 100.5], [99.5] * 6) == "HOLD"
    # A missing bar inside the window: no label rather than a guess.
    gappy = _path_bars(*calm).filter(pl.col("timestamp") != at + timedelta(hours=2))
    assert triple_barrier(gappy, point, timedelta(hours=4))["barrier"][0] is None
