"""The warehouse on real 5m bars: upserts that are idempotent and touch only their days, point-in-time
and filtered reads, `replace` dropping rows a rebuild no longer produces, atomic writes, refused keyless
rows, quarantine de-duplication, DuckDB views, open tables gaining columns, and `info()`.
The registry's other tables (journal, decision cache, SFT dataset) are tested in tests/warehouse/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.market.clean import clean_bars
from crypto_pipeline.market.schema import INGESTED_AT, conform_bars
from crypto_pipeline.warehouse import Warehouse

DAY1 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture(scope="module")
def real(recorded) -> pl.DataFrame:
    """Four real days of BTC/USDT and ETH/USDT 5m bars, as raw_bars rows."""
    frame = (
        pl.scan_parquet(recorded("binance-spot-2024", "bars_5m.parquet"))
        .filter(
            pl.col("symbol").is_in(SYMBOLS)
            & (pl.col("timestamp") >= DAY1)
            & (pl.col("timestamp") < DAY1 + 4 * DAY)
        )
        .collect()
    )
    return conform_bars(frame, timeframe="5m")


def _days(frame: pl.DataFrame, first: int, count: int = 1) -> pl.DataFrame:
    lo = DAY1 + first * DAY
    return frame.filter((pl.col("timestamp") >= lo) & (pl.col("timestamp") < lo + count * DAY))


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix == ".parquet"}


def test_rows_read_back_exactly_as_upserted_sorted_by_symbol_and_time(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    stamp = datetime(2024, 6, 1, tzinfo=UTC)
    shuffled = real.sample(fraction=1.0, shuffle=True, seed=1)
    report = wh.upsert("raw_bars", shuffled, ingested_at=stamp)
    assert len(report.written) == 4 and report.rows_stored == real.height
    back = wh.read("raw_bars")
    assert back.drop(INGESTED_AT).equals(
        real.sort("symbol", "timestamp").select(back.drop(INGESTED_AT).columns)
    )
    assert back[INGESTED_AT].unique().to_list() == [stamp]


def test_partition_directories_are_filesystem_safe_and_data_keeps_the_real_symbol(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", _days(real, 0))
    relative = [p.relative_to(tmp_path).as_posix() for p in _files(tmp_path)]
    assert relative == ["raw_bars/timeframe=5m/date=2024-05-01/data.parquet"]
    assert sorted(pl.read_parquet(tmp_path / relative[0])["symbol"].unique()) == SYMBOLS


def test_reingesting_the_same_rows_changes_nothing_not_even_file_times(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", real, ingested_at=datetime(2024, 6, 1, tzinfo=UTC))
    before, files = wh.read("raw_bars"), _files(tmp_path)
    again = wh.upsert("raw_bars", real, ingested_at=datetime(2024, 7, 1, tzinfo=UTC))
    assert again.written == [] and again.unchanged == 4
    assert _files(tmp_path) == files
    assert wh.read("raw_bars").equals(before)  # same rows, and the first ingestion time is kept


def test_overlapping_reingest_keeps_one_row_per_bar_and_later_data_wins(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    first_time, second_time = datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC)
    wh.upsert("raw_bars", _days(real, 0, 3), ingested_at=first_time)
    # The second batch overlaps days 2-3, revises 10 volumes on day 2, and adds day 4.
    revised = _days(real, 1, 3).with_columns(
        pl.when(pl.int_range(pl.len()) < 10)
        .then(pl.col("volume") + 1.0)
        .otherwise(pl.col("volume"))
        .alias("volume")
    )
    wh.upsert("raw_bars", revised, ingested_at=second_time)
    back = wh.read("raw_bars")
    assert back.height == real.height
    assert back.select(pl.struct("symbol", "timestamp").is_unique().all()).item()
    merged = back.join(
        revised.select("symbol", "timestamp", pl.col("volume").alias("sent")), on=["symbol", "timestamp"]
    )
    assert (merged["volume"] == merged["sent"]).all()
    # Only changed or new rows carry the second ingestion time.
    stamps = back.group_by(INGESTED_AT).len().sort(INGESTED_AT)
    assert stamps.rows() == [
        (first_time, real.height - 10 - _days(real, 3).height),
        (second_time, 10 + _days(real, 3).height),
    ]


def test_appending_one_day_writes_only_that_days_file(tmp_path: Path, real: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", _days(real, 0, 3))
    before = _files(tmp_path)
    report = wh.upsert("raw_bars", _days(real, 3))
    after = _files(tmp_path)
    new_file = tmp_path / "raw_bars" / "timeframe=5m" / "date=2024-05-04" / "data.parquet"
    assert report.written == [new_file]
    assert set(after) == set(before) | {new_file}
    assert {p: after[p] for p in before} == before


def test_point_in_time_reads_see_only_closed_bars_that_were_ingested_by_then(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    # Day 1 streamed in as it happened; day 2 arrived in one batch at the start of day 3.
    wh.upsert("raw_bars", _days(real, 0), ingested_at=DAY1)
    wh.upsert("raw_bars", _days(real, 1), ingested_at=DAY1 + 2 * DAY)

    mid_morning = DAY1 + timedelta(hours=6, minutes=2)
    early = wh.read("raw_bars", as_of=mid_morning)
    assert early["timestamp"].max() == DAY1 + timedelta(hours=5, minutes=55)  # 06:00 closes at 06:05
    assert early.height == 2 * 72

    before_batch = wh.read("raw_bars", as_of=DAY1 + 2 * DAY - timedelta(seconds=1))
    assert before_batch["timestamp"].max() < DAY1 + DAY  # day 2's bars had closed but were not ingested
    after_batch = wh.read("raw_bars", as_of=DAY1 + 2 * DAY)
    assert after_batch.height == _days(real, 0, 2).height


def test_reads_filter_by_symbol_timeframe_and_half_open_range(tmp_path: Path, real: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", real)
    lo, hi = DAY1 + timedelta(hours=23), DAY1 + DAY + timedelta(hours=1)
    got = wh.read("raw_bars", symbols=["ETH/USDT"], timeframes=["5m"], start=lo, end=hi)
    assert got.height == 24 and got["symbol"].unique().to_list() == ["ETH/USDT"]
    assert got["timestamp"].min() == lo and got["timestamp"].max() == hi - timedelta(minutes=5)
    assert wh.read("raw_bars", timeframes=["1h"]).is_empty()


def test_replace_removes_rows_no_longer_produced_and_leaves_other_symbols(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    bars = real.with_columns(pl.lit(1, pl.Int32).alias("bar_count"), pl.lit(False).alias("gap_before"))
    wh.upsert("bars", _days(bars, 0, 2))
    rebuilt = _days(bars, 0).filter((pl.col("symbol") == "BTC/USDT") & (pl.col("timestamp").dt.hour() != 3))
    report = wh.replace(
        "bars",
        rebuilt,
        symbols=["BTC/USDT"],
        timeframes=["5m"],
        first_day=DAY1.date(),
        last_day=(DAY1 + DAY).date(),
    )
    back = wh.read("bars")
    assert back.filter(pl.col("symbol") == "ETH/USDT").height == 2 * 288
    assert back.filter(pl.col("symbol") == "BTC/USDT").height == 288 - 12
    assert len(report.written) == 2 and report.deleted == []
    emptied = wh.replace(
        "bars",
        bars.clear(),
        symbols=SYMBOLS,
        timeframes=["5m"],
        first_day=(DAY1 + DAY).date(),
        last_day=(DAY1 + DAY).date(),
    )
    assert len(emptied.deleted) == 1 and not emptied.deleted[0].exists()
    with pytest.raises(ValueError, match="outside the scope"):
        wh.replace(
            "bars",
            _days(bars, 2),
            symbols=SYMBOLS,
            timeframes=["5m"],
            first_day=DAY1.date(),
            last_day=DAY1.date(),
        )


def test_a_failed_write_leaves_the_stored_partition_whole_and_no_temp_file(
    tmp_path: Path, real: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = Warehouse(tmp_path, max_workers=1)
    wh.upsert("raw_bars", _days(real, 0))
    before, files = wh.read("raw_bars"), _files(tmp_path)

    def crash_midway(self: pl.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        wh.upsert("raw_bars", _days(real, 0).with_columns(pl.col("close") * 1.0001))
    monkeypatch.undo()
    assert _files(tmp_path) == files
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []
    assert wh.read("raw_bars").equals(before)


def test_rows_without_a_key_are_refused_with_a_clear_message(tmp_path: Path, real: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    with pytest.raises(ValueError, match="lack a symbol, timeframe or timestamp; quarantine them"):
        wh.upsert("raw_bars", real.head(2).with_columns(pl.lit(None, pl.Utf8).alias("symbol")))
    with pytest.raises(ValueError, match="need column"):
        wh.upsert("raw_bars", real.drop("timeframe"))


def test_quarantine_keeps_each_bad_row_once(tmp_path: Path, real: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    bad = _days(real, 0).head(3).with_columns(pl.lit(-1.0).alias("volume"))
    rejected = clean_bars(bad, timeframe="5m", now=DAY1 + 10 * DAY).quarantine
    wh.append_quarantine(rejected)
    wh.append_quarantine(rejected.with_columns(pl.col("detected_at") + timedelta(hours=1)))
    stored = wh.read_quarantine()
    assert stored.height == 3 and set(stored["reason"]) == {"negative_volume"}
    assert stored["detected_at"].unique().to_list() == rejected["detected_at"].unique().to_list()


def test_duckdb_views_query_the_parquet_files_with_real_symbols_and_hive_dates(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", real)
    with wh.connect() as con:
        rows = con.execute(
            "SELECT symbol, count(*), min(date), max(date) FROM raw_bars GROUP BY symbol ORDER BY symbol"
        ).fetchall()
        views = {
            r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        }
        empty_bars = con.execute("SELECT count(*) FROM bars").fetchone()
    assert [r[:2] for r in rows] == [("BTC/USDT", 4 * 288), ("ETH/USDT", 4 * 288)]
    assert str(rows[0][2]) == "2024-05-01" and str(rows[0][3]) == "2024-05-04"
    assert {"raw_bars", "bars", "quarantine"} <= views
    assert empty_bars == (0,)
    assert wh.duckdb_path.is_file()


def test_tables_written_by_other_stages_can_gain_columns(tmp_path: Path, real: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    base = _days(real, 0).select("symbol", "timeframe", "timestamp", pl.col("close").alias("rsi_14"))
    wh.upsert("features", base)
    wh.upsert(
        "features",
        _days(real, 1).select(
            "symbol", "timeframe", "timestamp", pl.col("close").alias("rsi_14"), pl.lit(1.0).alias("macd")
        ),
    )
    back = wh.read("features")
    assert back.height == 2 * 2 * 288 and {"rsi_14", "macd"} <= set(back.columns)
    assert back.filter(pl.col("timestamp") < DAY1 + DAY)["macd"].null_count() == 2 * 288
    assert back.filter(pl.col("timestamp") >= DAY1 + DAY)["macd"].null_count() == 0


def test_info_summarises_rows_gaps_and_quarantine_per_symbol_and_timeframe(
    tmp_path: Path, real: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    holed = real.filter(~((pl.col("symbol") == "ETH/USDT") & (pl.col("timestamp").dt.hour() == 12)))
    wh.upsert("raw_bars", holed)
    wh.append_quarantine(
        clean_bars(
            real.head(1).with_columns(pl.lit(0.0).alias("open")), timeframe="5m", now=DAY1 + 9 * DAY
        ).quarantine.with_columns(pl.lit("raw").alias("stage"))
    )
    info = wh.info()
    assert info.select(
        "table", "symbol", "timeframe", "rows", "days", "expected", "missing", "quarantined"
    ).rows() == [
        ("raw_bars", "BTC/USDT", "5m", 4 * 288, 4, 4 * 288, 0, 1),
        ("raw_bars", "ETH/USDT", "5m", 4 * 288 - 48, 4, 4 * 288, 48, 0),
    ]
    assert info["gap_ratio"][1] == pytest.approx(48 / (4 * 288))
