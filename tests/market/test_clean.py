"""Cleaning and quarantine: every kind of bad source row lands in quarantine with its reason, nothing is
lost, and the data-quality checks catch what the lead's blocking asset checks rely on.

Bad rows are copies of real Binance 5m bars with one fault injected each.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from crypto_pipeline.market.clean import (
    Reason,
    clean_bars,
    count_out_of_order,
    flag_gaps,
    gap_report,
    screen_raw,
)
from crypto_pipeline.market.schema import INGESTED_AT, QUARANTINE_SCHEMA, conform_bars
from crypto_pipeline.quality import check_gaps, check_monotonic, check_ohlc, check_unique

DAY = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def real(recorded) -> pl.DataFrame:
    """One real day of BTC/USDT and ETH/USDT 5m bars (576 rows), as a source would send them."""
    frame = (
        pl.scan_parquet(recorded("binance-spot-2024", "bars_5m.parquet"))
        .filter(
            pl.col("symbol").is_in(["BTC/USDT", "ETH/USDT"])
            & (pl.col("timestamp") >= DAY)
            & (pl.col("timestamp") < DAY + timedelta(days=1))
        )
        .collect()
    )
    return conform_bars(frame)


def _row(real: pl.DataFrame, i: int, **changes: object) -> pl.DataFrame:
    row = real.slice(i, 1)
    return row.with_columns([pl.lit(v, dtype=row.schema[k]).alias(k) for k, v in changes.items()])


def _faulty(real: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Real rows with faults injected in place (so that bad rows replace good ones, like a bad feed)."""
    t = real.get_column("timestamp")
    faults = {
        Reason.NON_FINITE: _row(real, 10, close=float("nan")),
        Reason.NON_POSITIVE_PRICE: _row(real, 20, low=-1.0),
        Reason.HIGH_BELOW_LOW: _row(real, 30, high=1.0, low=2.0, open=1.5, close=1.5),
        Reason.OHLC_INCONSISTENT: _row(real, 40, close=real["high"][40] * 1.5),
        Reason.NEGATIVE_VOLUME: _row(real, 50, volume=-3.0),
        Reason.MISALIGNED: _row(real, 60, timestamp=t[60] + timedelta(minutes=2)),
        Reason.FUTURE: _row(real, 70, timestamp=NOW + timedelta(days=1)),
        Reason.UNKNOWN_SYMBOL: _row(real, 80, symbol="DOGE/USDT"),
        Reason.BAD_TIMESTAMP: _row(real, 90).with_columns(
            pl.lit(None, real.schema["timestamp"]).alias("timestamp")
        ),
    }
    zero_price = _row(real, 100, open=0.0)
    replaced = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
    kept = real.with_row_index("_i").filter(~pl.col("_i").is_in(list(replaced))).drop("_i")
    duplicate_first = _row(real, 5, volume=real["volume"][5] * 1.5)  # later row (the real one) must win
    frame = pl.concat([duplicate_first, kept, *faults.values(), zero_price])
    expected = {reason.value: 1 for reason in faults} | {Reason.DUPLICATE.value: 1}
    expected[Reason.NON_POSITIVE_PRICE.value] += 1
    return frame, expected


def test_every_kind_of_bad_row_is_quarantined_with_its_reason_and_nothing_is_lost(real: pl.DataFrame) -> None:
    frame, expected = _faulty(real)
    result = clean_bars(frame, timeframe="5m", known_symbols=["BTC/USDT", "ETH/USDT"], now=NOW)

    assert result.reasons == dict(sorted(expected.items()))
    assert result.clean.height + result.quarantine.height == frame.height
    assert result.quarantine.schema == QUARANTINE_SCHEMA
    assert set(result.quarantine["stage"]) == {"bars"} and result.quarantine["detected_at"].null_count() == 0
    # The clean side is sorted, unique, and every value in it is sane.
    assert check_unique(result.clean).passed
    assert check_ohlc(result.clean).passed
    assert check_monotonic(result.clean).passed


def test_a_duplicate_keeps_the_last_ingested_row_and_quarantines_the_earlier_one(real: pl.DataFrame) -> None:
    original = real.slice(5, 1)
    revised = original.with_columns(pl.col("volume") * 1.5)
    early = datetime(2024, 3, 2, tzinfo=UTC)
    late = early + timedelta(hours=1)
    # Given out of arrival order: the later ingestion time decides, not the position.
    frame = pl.concat(
        [
            revised.with_columns(pl.lit(late).alias(INGESTED_AT)),
            original.with_columns(pl.lit(early).alias(INGESTED_AT)),
        ]
    )
    result = clean_bars(frame, timeframe="5m", now=NOW)
    assert result.clean["volume"].to_list() == revised["volume"].to_list()
    assert result.quarantine["reason"].to_list() == ["duplicate"]
    assert result.quarantine["volume"].to_list() == original["volume"].to_list()


def test_a_bad_correction_does_not_replace_a_valid_bar(real: pl.DataFrame) -> None:
    good = real.slice(7, 1)
    bad_later = good.with_columns(pl.lit(float("nan")).alias("open"))
    result = clean_bars(pl.concat([good, bad_later]), timeframe="5m", now=NOW)
    assert result.clean.height == 1 and result.clean["open"].to_list() == good["open"].to_list()
    assert result.reasons == {"non_finite": 1}


def test_out_of_order_rows_are_kept_sorted_and_counted(real: pl.DataFrame) -> None:
    shuffled = real.sample(fraction=1.0, shuffle=True, seed=7)
    assert count_out_of_order(real) == 0
    result = clean_bars(shuffled, timeframe="5m", now=NOW)
    assert result.out_of_order > 0
    assert result.quarantine.is_empty()
    assert result.clean.select(real.columns).equals(real.sort("symbol", "timestamp"))


def test_a_bar_still_open_at_now_is_future(real: pl.DataFrame) -> None:
    last = real.sort("timestamp").tail(1)
    still_open_at = last["timestamp"][0] + timedelta(minutes=4)
    closed_at = last["timestamp"][0] + timedelta(minutes=5)
    assert clean_bars(last, timeframe="5m", now=still_open_at).reasons == {"future": 1}
    assert clean_bars(last, timeframe="5m", now=closed_at).reasons == {}


def test_screen_raw_keeps_bad_values_for_later_but_rejects_rows_it_cannot_store(real: pl.DataFrame) -> None:
    frame, _ = _faulty(real)
    window = (DAY, DAY + timedelta(days=1))
    result = screen_raw(frame, timeframe="5m", known_symbols=["BTC/USDT", "ETH/USDT"], window=window)
    # Values are judged when bars are built; a raw row only needs a key inside the request.
    assert result.reasons == {"bad_timestamp": 1, "duplicate": 1, "out_of_range": 1, "unknown_symbol": 1}
    assert set(result.quarantine["stage"]) == {"raw"}
    assert result.clean.height + result.quarantine.height == frame.height


def test_gap_report_and_flags_find_removed_bars(real: pl.DataFrame) -> None:
    btc = real.filter(pl.col("symbol") == "BTC/USDT")
    holed = btc.with_row_index("_i").filter(~pl.col("_i").is_in([100, 101, 102, 200])).drop("_i")
    report = gap_report(holed, "5m")
    assert report.select("expected", "present", "missing", "gaps").row(0) == (288, 284, 4, 2)
    assert report["max_gap"][0] == timedelta(minutes=15)
    flagged = flag_gaps(holed, "5m")
    after_holes = flagged.filter("gap_before")["timestamp"].to_list()
    # The first bar has nothing before it in the frame; then one flag after each hole.
    assert after_holes == [btc["timestamp"][0], btc["timestamp"][103], btc["timestamp"][201]]


def test_gap_report_over_a_fixed_window_counts_a_missing_tail(real: pl.DataFrame) -> None:
    btc = real.filter(pl.col("symbol") == "BTC/USDT").head(144)  # stops at noon
    report = gap_report(btc, "5m", start=DAY, end=DAY + timedelta(days=1))
    assert report.select("expected", "present", "missing").row(0) == (288, 144, 144)


def test_checks_fail_on_injected_faults_with_counts_and_json_safe_samples(real: pl.DataFrame) -> None:
    broken = pl.concat([real, real.slice(3, 2)])  # two duplicated rows, appended out of order
    broken = broken.with_columns(
        pl.when(pl.int_range(pl.len()) == 11)
        .then(pl.col("high") * 0.5)
        .otherwise(pl.col("high"))
        .alias("high")
    )
    unique, ohlc, monotonic = check_unique(broken), check_ohlc(broken), check_monotonic(broken)
    assert (unique.passed, unique.count) == (False, 4)
    assert (ohlc.passed, ohlc.count) == (False, 1)
    assert (monotonic.passed, monotonic.count) == (False, 1)  # only the first step back in time
    for outcome in (unique, ohlc, monotonic):
        assert outcome.sample.height > 0
        json.dumps(outcome.sample_records())


def test_gap_check_passes_within_the_threshold_and_fails_beyond_it(real: pl.DataFrame) -> None:
    btc = real.filter(pl.col("symbol") == "BTC/USDT")
    holed = btc.with_row_index("_i").filter(pl.col("_i") % 10 != 3).drop("_i")  # ~10% missing
    assert check_gaps(btc, "5m", max_gap_ratio=0.0).passed
    outcome = check_gaps(holed, "5m", max_gap_ratio=0.02)
    assert not outcome.passed and outcome.count == 1
    assert outcome.sample["gap_ratio"][0] == pytest.approx(29 / 288)
