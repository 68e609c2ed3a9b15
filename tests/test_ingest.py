"""Ingestion end to end: source -> raw_bars -> bars, idempotent, one-day appends, quarantine, user errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.ingest import build_bars, ingest_raw, resolve_range
from crypto_pipeline.market.schema import conform_bars
from crypto_pipeline.market.sources import RecordedSource
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.quality import check_monotonic, check_ohlc, check_unique
from crypto_pipeline.warehouse import Warehouse

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
TARGETS = ["15m", "1h", "4h", "1d"]
D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)
NOW = datetime(2024, 4, 1, tzinfo=UTC)


def _at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
def binance(recorded) -> Path:
    return recorded("binance-spot-2024")


def _real(binance: Path, first: date, last: date, symbols: Sequence[str] = SYMBOLS) -> pl.DataFrame:
    lo, hi = resolve_range(first, last)
    frame = (
        pl.scan_parquet(binance / "bars_5m.parquet")
        .filter(
            pl.col("symbol").is_in(list(symbols)) & (pl.col("timestamp") >= lo) & (pl.col("timestamp") < hi)
        )
        .collect()
    )
    return conform_bars(frame)


class FrameSource:
    """A source that serves a given frame (real rows, some with faults), plus `noise` rows sent along
    with the first response whatever was asked (a misbehaving feed)."""

    name = "frames"
    description = "test frames"
    symbols_per_request = 1

    def __init__(self, frame: pl.DataFrame, noise: pl.DataFrame | None = None) -> None:
        self.frame, self.noise = frame, noise

    def symbols(self, timeframe: Timeframe | None = None) -> list[str]:
        return SYMBOLS

    def unknown_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> list[str]:
        return [s for s in symbols if s not in SYMBOLS]

    def fetch_bars(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        ts = pl.col("timestamp")
        rows = self.frame.filter(pl.col("symbol").is_in(list(symbols)) & (ts >= start) & (ts < end))
        if self.noise is not None:
            rows, self.noise = pl.concat([rows, self.noise]), None
        return rows


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def _ingest_and_build(source: object, wh: Warehouse, first: date, last: date, now: datetime = NOW):
    raw = ingest_raw(source, wh, SYMBOLS, "5m", first, last, progress=False)  # type: ignore[arg-type]
    built = build_bars(wh, SYMBOLS, "5m", TARGETS, first, last, now=now, progress=False)
    return raw, built


def test_ingest_and_build_give_clean_resampled_bars_that_pass_every_check(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    raw, built = _ingest_and_build(RecordedSource(binance), wh, D1, D2)
    assert raw.rows_fetched == raw.rows_stored == 2 * 3 * 288 and raw.quarantined == {}
    assert built.rows == {"5m": 1728, "15m": 576, "1h": 144, "4h": 36, "1d": 6}
    bars = wh.read("bars")
    assert bars.height == sum(built.rows.values())
    assert all(check(bars).passed for check in (check_unique, check_ohlc, check_monotonic))
    assert not bars.filter(pl.col("timestamp") > _at(D1))["gap_before"].any()
    assert bars.filter(pl.col("timeframe") == "1d")["bar_count"].to_list() == [288] * 6


def test_reingesting_and_rebuilding_a_range_rewrites_nothing(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    source = RecordedSource(binance)
    _ingest_and_build(source, wh, D1, D2)
    files, raw_before, bars_before = _files(tmp_path), wh.read("raw_bars"), wh.read("bars")
    raw, built = _ingest_and_build(source, wh, D1, D2)
    assert raw.partitions_written == 0 and raw.partitions_unchanged == 2
    assert built.partitions_written == 0 and built.partitions_unchanged == 10
    assert _files(tmp_path) == files
    assert wh.read("raw_bars").equals(raw_before) and wh.read("bars").equals(bars_before)


def test_later_data_wins_in_raw_bars_and_flows_into_the_rebuilt_bars(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    real = _real(binance, D1, D2)
    _ingest_and_build(FrameSource(real), wh, D1, D2)
    noon = _at(D2, 12)
    revised = real.with_columns(
        pl.when(
            (pl.col("symbol") == "ETH/USDT")
            & (pl.col("timestamp") >= noon)
            & (pl.col("timestamp") < noon + timedelta(hours=1))
        )
        .then(pl.col("volume") + 100.0)
        .otherwise(pl.col("volume"))
        .alias("volume")
    )
    raw, built = _ingest_and_build(FrameSource(revised), wh, D2, D2)
    assert raw.partitions_written == 1
    assert wh.read("raw_bars").height == real.height
    hour = wh.read("bars", symbols=["ETH/USDT"], timeframes=["1h"], start=noon, end=noon + timedelta(hours=1))
    original = real.filter(
        (pl.col("symbol") == "ETH/USDT")
        & (pl.col("timestamp") >= noon)
        & (pl.col("timestamp") < noon + timedelta(hours=1))
    )
    assert hour["volume"][0] == pytest.approx(original["volume"].sum() + 12 * 100.0)


def test_appending_one_day_touches_only_that_days_files(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    source = RecordedSource(binance)
    _ingest_and_build(source, wh, D1, D2)
    before = _files(tmp_path)
    _ingest_and_build(source, wh, D3, D3)
    after = _files(tmp_path)
    added = sorted(p.relative_to(tmp_path).as_posix() for p in set(after) - set(before))
    assert added == sorted(
        [f"raw_bars/timeframe=5m/date={D3}/data.parquet"]
        + [f"bars/timeframe={tf}/date={D3}/data.parquet" for tf in ["5m", *TARGETS]]
    )
    assert {p: after[p] for p in before} == before  # nothing already stored was rewritten
    assert wh.read("bars", timeframes=["1d"])["timestamp"].dt.date().unique().sort().to_list() == [D1, D2, D3]


def test_bad_source_rows_are_quarantined_with_reasons_and_nothing_is_lost(binance: Path, tmp_path: Path) -> None:
    real = _real(binance, D1, D2)
    i = pl.int_range(pl.len()).over("symbol")  # row number within each symbol
    eth = pl.col("symbol") == "ETH/USDT"
    faulty = real.with_columns(
        pl.when(eth & (i == 300)).then(float("nan")).otherwise(pl.col("close")).alias("close"),
        pl.when(eth & (i == 310)).then(-5.0).otherwise(pl.col("volume")).alias("volume"),
        pl.when(eth & (i == 320)).then(0.0).otherwise(pl.col("open")).alias("open"),
        pl.when(eth & (i == 330)).then(pl.col("low") * 0.5).otherwise(pl.col("high")).alias("high"),
    )
    btc_day2 = real.filter((pl.col("symbol") == "BTC/USDT") & (pl.col("timestamp") >= _at(D2)))
    stale_copy = btc_day2.head(2).with_columns(pl.col("volume") * 2)  # sent first, then superseded
    noise = pl.concat(
        [
            real.head(1).with_columns(pl.lit("DOGE/USDT").alias("symbol")),  # not asked for
            real.head(1).with_columns(pl.lit(_at(D3, 5)).alias("timestamp")),  # outside the range
            real.head(1).with_columns(pl.lit(None, real.schema["timestamp"]).alias("timestamp")),
        ]
    )
    # Out of order: BTC's day 2 arrives before its day 1, with the stale copies first.
    btc = real.filter(pl.col("symbol") == "BTC/USDT")
    shuffled = pl.concat(
        [
            stale_copy,
            btc_day2,
            btc.filter(pl.col("timestamp") < _at(D2)),
            faulty.filter(~(pl.col("symbol") == "BTC/USDT")),
        ]
    )
    wh = Warehouse(tmp_path)
    raw, built = _ingest_and_build(FrameSource(shuffled, noise), wh, D1, D2, now=_at(D2, 23, 50))

    fetched = shuffled.height + noise.height
    assert raw.rows_fetched == fetched
    assert raw.quarantined == {"bad_timestamp": 1, "duplicate": 2, "out_of_range": 1, "unknown_symbol": 1}
    assert raw.out_of_order > 0
    assert raw.rows_stored + sum(raw.quarantined.values()) == fetched
    raw_quarantine = wh.read_quarantine(stage="raw")
    assert raw_quarantine.height == 5

    # Building judges values; the bars still open at `now` (23:50 and 23:55) wait as `future`.
    assert built.quarantined == {
        "future": 2 * 3,
        "high_below_low": 1,
        "negative_volume": 1,
        "non_finite": 1,
        "non_positive_price": 1,
    }
    bars = wh.read("bars", timeframes=["5m"])
    assert bars.height + sum(built.quarantined.values()) == raw.rows_stored
    assert wh.read_quarantine(stage="bars").height == 10
    assert all(check(wh.read("bars")).passed for check in (check_unique, check_ohlc, check_monotonic))
    # A removed bar leaves a flagged gap behind it; the last day is not complete, so no 1d bar for it.
    eth_rows = real.filter(eth)
    holes = [eth_rows["timestamp"][k] + timedelta(minutes=5) for k in (300, 310, 320, 330)]
    flagged = bars.filter(pl.col("gap_before") & (pl.col("symbol") == "ETH/USDT"))["timestamp"].to_list()
    assert holes == flagged[1:]  # the first is the first bar ever stored
    assert wh.read("bars", timeframes=["1d"])["timestamp"].unique().to_list() == [_at(D1)]

    # Re-running the same inputs does not pile up quarantine rows.
    _ingest_and_build(FrameSource(shuffled, noise), wh, D1, D2, now=_at(D2, 23, 50))
    assert wh.read_quarantine().height == 5 + 10


def test_the_first_bar_of_a_day_is_flagged_after_a_gap_at_the_end_of_the_previous_day(binance: Path, tmp_path: Path) -> None:
    real = _real(binance, D1, D2)
    holed = real.filter(pl.col("timestamp") != _at(D1, 23, 55))
    wh = Warehouse(tmp_path)
    ingest_raw(FrameSource(holed), wh, SYMBOLS, "5m", D1, D2, progress=False)  # type: ignore[arg-type]
    build_bars(wh, SYMBOLS, "5m", TARGETS, D2, D2, now=NOW, progress=False)  # day 2 alone
    first = wh.read("bars", start=_at(D2), end=_at(D2, 0, 5))
    assert first.filter(pl.col("timeframe") == "5m")["gap_before"].to_list() == [True] * 3
    # The coarser bars before midnight exist (only one 5m bar short), so they are not gaps.
    assert not first.filter(pl.col("timeframe") != "5m")["gap_before"].any()


def test_bars_wait_until_their_period_is_over(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    _ingest_and_build(RecordedSource(binance), wh, D1, D1, now=_at(D1, 10, 2))
    bars = wh.read("bars", symbols=["BTC/USDT"])
    last = {tf: bars.filter(pl.col("timeframe") == tf)["timestamp"].max() for tf in ["5m", "1h", "4h"]}
    assert last == {"5m": _at(D1, 9, 55), "1h": _at(D1, 9), "4h": _at(D1, 4)}
    assert bars.filter(pl.col("timeframe") == "1d").is_empty()
    # Later, with the whole day closed, the same build completes it.
    build_bars(wh, SYMBOLS, "5m", TARGETS, D1, D1, now=NOW, progress=False)
    assert wh.read("bars", timeframes=["1d"]).height == 3
    assert wh.read_quarantine(stage="bars").is_empty()


def test_built_bars_carry_when_their_data_arrived_so_point_in_time_reads_hold(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    source = RecordedSource(binance)
    # Day 1 arrived at the end of day 1; day 2 only the next evening.
    ingest_raw(source, wh, SYMBOLS, "5m", D1, D1, progress=False, ingested_at=_at(D2))
    ingest_raw(source, wh, SYMBOLS, "5m", D2, D2, progress=False, ingested_at=_at(D3, 18))
    build_bars(wh, SYMBOLS, "5m", TARGETS, D1, D2, now=NOW, progress=False)

    seen_at_noon = wh.read("bars", as_of=_at(D3, 12))  # day 2 had closed but had not arrived
    assert seen_at_noon["timestamp"].max() < _at(D2)
    assert seen_at_noon.group_by("timeframe").len().sort("timeframe").rows() == [
        ("15m", 3 * 96),
        ("1d", 3),
        ("1h", 3 * 24),
        ("4h", 3 * 6),
        ("5m", 3 * 288),
    ]
    # A resampled bar is known once its last part is: the day-2 4h bars appear with day 2's data.
    assert wh.read("bars", timeframes=["4h"], as_of=_at(D3, 18)).height == 2 * 3 * 6


def test_an_empty_range_is_reported_not_an_error(binance: Path, tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    raw, built = _ingest_and_build(RecordedSource(binance), wh, date(2023, 6, 1), date(2023, 6, 2))
    assert raw.rows_fetched == 0 and raw.empty_symbols == SYMBOLS
    assert "no bars in this range for: BTC/USDT, ETH/USDT, SOL/USDT" in raw.summary()
    assert built.rows == {"5m": 0, "15m": 0, "1h": 0, "4h": 0, "1d": 0}
    assert wh.read("raw_bars").is_empty()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"symbols": ["BTC/USDT", "NOPE/USDT"]},
            r"unknown symbol\(s\) NOPE/USDT for recorded data in .* \(5m\); known: ",
        ),
        ({"start": "2024-03-05", "end": "2024-03-01"}, "start 2024-03-05 is not before end 2024-03-01"),
        ({"start": "2024-13-01"}, "invalid start '2024-13-01': expected a day"),
        ({"timeframe": "7m"}, "unknown timeframe '7m'; expected one of 1m, 5m, 15m, 1h, 4h, 1d"),
        ({"symbols": " , "}, "no symbols given"),
        ({"timeframe": "1m"}, r"no 1m bars in .*; recorded timeframes there: 5m, 15m, 1h, 4h, 1d"),
    ],
)
def test_user_mistakes_get_one_clear_message_before_any_work(
    binance: Path,
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    args = {"symbols": ["BTC/USDT"], "timeframe": "5m", "start": "2024-03-01", "end": "2024-03-01"} | kwargs
    with pytest.raises(UserInputError, match=message) as caught:
        ingest_raw(RecordedSource(binance), Warehouse(tmp_path), progress=False, **args)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "raw_bars").exists()


def test_building_a_timeframe_that_is_not_a_multiple_of_the_base_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="cannot build 5m bars from 15m bars"):
        build_bars(Warehouse(tmp_path), SYMBOLS, "15m", ["5m"], D1, D1, progress=False)


def test_ranges_are_whole_days_or_exact_datetimes() -> None:
    assert resolve_range("2024-03-01", "2024-03-02") == (_at(D1), _at(D3))
    assert resolve_range("2024-03-01T06:00", datetime(2024, 3, 1, 7, tzinfo=UTC)) == (_at(D1, 6), _at(D1, 7))
