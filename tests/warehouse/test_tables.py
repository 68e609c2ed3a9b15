"""The table registry: derived tables drop what a rebuild no longer produces, the journal is
append-only and idempotent, the decision cache and the SFT dataset have their own layouts, and a
module can register a table of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.market.schema import INGESTED_AT, conform_bars
from crypto_pipeline.warehouse import Partitioning, TableSpec, Warehouse, register_table, table_spec
from crypto_pipeline.warehouse import tables as registry

DAY1 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture(scope="module")
def hourly(recorded) -> pl.DataFrame:
    """Two real days of BTC/USDT and ETH/USDT 1h bars."""
    frame = (
        pl.scan_parquet(recorded("binance-spot-2024", "bars_1h.parquet"))
        .filter(
            pl.col("symbol").is_in(SYMBOLS)
            & (pl.col("timestamp") >= DAY1)
            & (pl.col("timestamp") < DAY1 + 2 * DAY)
        )
        .collect()
    )
    return conform_bars(frame, timeframe="1h")


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def test_a_derived_rebuild_through_upsert_drops_a_row_it_no_longer_produces(
    tmp_path: Path, hourly: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    features = hourly.select(
        "symbol", "timeframe", "timestamp", (pl.col("close") / pl.col("open") - 1).alias("ret_1h")
    )
    wh.upsert("features", features)
    stale = DAY1 + 5 * HOUR
    # The rebuild no longer produces BTC/USDT's 05:00 row (say the code now needs more history).
    rebuilt = features.filter(~((pl.col("symbol") == "BTC/USDT") & (pl.col("timestamp") == stale)))
    wh.upsert("features", rebuilt)
    back = wh.read("features")
    assert back.height == features.height - 1
    assert back.filter((pl.col("symbol") == "BTC/USDT") & (pl.col("timestamp") == stale)).is_empty()
    # A rebuild of one symbol leaves the other symbols in the same partitions alone.
    wh.upsert("features", rebuilt.filter(pl.col("symbol") == "BTC/USDT").head(3))
    assert wh.read("features", symbols=["ETH/USDT"]).height == 2 * 24
    # Only the partitions the rows fall in are rebuilt: BTC/USDT keeps its second day.
    assert wh.read("features", symbols=["BTC/USDT"]).height == 3 + 24
    # `replace` names the whole scope, so it also clears days the rebuild produced nothing for.
    wh.replace(
        "features",
        rebuilt.filter(pl.col("symbol") == "BTC/USDT").head(3),
        symbols=["BTC/USDT"],
        timeframes=["1h"],
        first_day=DAY1.date(),
        last_day=(DAY1 + DAY).date(),
    )
    assert wh.read("features", symbols=["BTC/USDT"]).height == 3


def test_a_raw_table_keeps_rows_a_later_upsert_leaves_out(tmp_path: Path, hourly: pl.DataFrame) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("raw_bars", hourly)
    wh.upsert("raw_bars", hourly.filter(pl.col("timestamp") != DAY1 + 5 * HOUR))
    assert wh.read("raw_bars").height == hourly.height


def test_market_states_always_carry_prompt_version_and_hash_columns(
    tmp_path: Path, hourly: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    states = hourly.select(
        "symbol",
        "timeframe",
        "timestamp",
        (pl.col("timestamp") + HOUR).alias("at"),
        pl.col("close").alias("price"),
    ).with_columns(pl.lit("BTC/USDT price ...").alias("prompt"))
    wh.upsert("market_states", states)
    wh.upsert("market_states", states.head(1).with_columns(pl.lit("v3").alias("prompt_version")))
    back = wh.read("market_states")
    assert {"prompt_version", "prompt_hash", "price"} <= set(back.columns)
    assert back.schema["prompt_version"] == pl.Utf8
    assert back["prompt_version"].drop_nulls().to_list() == ["v3"]


def _orders(n: int) -> pl.DataFrame:
    t0 = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)
    return pl.DataFrame(
        {
            "time": [t0 + i * timedelta(minutes=30) for i in range(n)],
            "run_id": ["live-1"] * n,
            "symbol": ["BTC/USD"] * n,
            "client_order_id": [f"cp-{i}" for i in range(n)],
            "order_id": [f"o-{i}" for i in range(n)],
            "side": ["buy"] * n,
            "type": ["market"] * n,
            "qty": [0.001 * (i + 1) for i in range(n)],
            "status": ["filled"] * n,
        }
    )


def test_the_journal_is_append_only_and_rewriting_an_event_changes_nothing(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    orders = _orders(4)
    first = wh.upsert("orders", orders, ingested_at=datetime(2024, 5, 3, tzinfo=UTC))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in first.written) == [
        "orders/date=2024-05-01/data.parquet",
        "orders/date=2024-05-02/data.parquet",
    ]
    files = _files(tmp_path)
    again = wh.upsert("orders", orders)
    assert again.written == [] and _files(tmp_path) == files
    # The same event told differently does not rewrite history; a new event is appended.
    changed = orders.head(1).with_columns(pl.lit(9.0).alias("qty"))
    wh.upsert("orders", pl.concat([changed, _orders(5).tail(1)]))
    back = wh.read("orders")
    assert back.height == 5 and back["qty"][0] == pytest.approx(0.001)
    assert back.schema["limit_price"] == pl.Float64  # declared columns the writer left out are typed nulls
    assert back[INGESTED_AT][0] == datetime(2024, 5, 3, tzinfo=UTC)


def test_journal_reads_filter_on_the_event_time_and_as_of(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("orders", _orders(4), ingested_at=datetime(2024, 5, 1, tzinfo=UTC))
    t0 = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)
    assert wh.read("orders", start=t0 + timedelta(minutes=30)).height == 3
    assert wh.read("orders", end=t0 + timedelta(minutes=60)).height == 2
    # An event at exactly `as_of` is known then, a later one is not.
    assert wh.read("orders", as_of=t0 + timedelta(minutes=60)).height == 3
    # Nor is a row written to the warehouse after `as_of`, whatever its event time.
    equity = pl.DataFrame({"time": [t0], "run_id": ["r"], "equity": [1e5]})
    wh.upsert("equity", equity, ingested_at=t0 + HOUR)
    assert wh.read("equity", as_of=t0 + timedelta(minutes=59)).height == 0
    assert wh.read("equity", as_of=t0 + HOUR).height == 1


def test_every_write_leaves_the_duckdb_file_showing_the_rows_to_a_fresh_connection(tmp_path: Path) -> None:
    import duckdb

    wh = Warehouse(tmp_path)
    wh.refresh_views()  # the placeholders a first `make run` stage leaves before the journal exists
    t0 = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)
    rows = {
        "decisions": pl.DataFrame({"time": [t0], "run_id": ["r"], "symbol": ["BTC/USDT"], "action": ["BUY"]}),
        "risk_verdicts": pl.DataFrame({"time": [t0], "run_id": ["r"], "symbol": ["BTC/USDT"]}),
        "orders": _orders(2),
        "fills": pl.DataFrame({"time": [t0], "run_id": ["r"], "fill_id": ["o1:0.1"], "qty": [0.1]}),
        "equity": pl.DataFrame({"time": [t0], "run_id": ["r"], "equity": [1e5]}),
    }

    def counts() -> dict[str, int]:
        # Not the project's API: what `duckdb warehouse/warehouse.duckdb -c ...` sees.
        with duckdb.connect(str(wh.duckdb_path), read_only=True) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in rows}

    assert counts() == dict.fromkeys(rows, 0)
    for table, frame in rows.items():
        wh.upsert(table, frame)
    assert counts() == {t: f.height for t, f in rows.items()}
    # A table whose last partition goes shows as empty again, not as an error on a glob of no files.
    wh.replace("orders", _orders(0), symbols=None, timeframes=None, first_day=None, last_day=None)
    assert counts()["orders"] == 0


def test_risk_verdicts_keep_their_reasons_as_a_list(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    verdict = pl.DataFrame(
        {
            "time": [DAY1],
            "run_id": ["r"],
            "symbol": ["BTC/USD"],
            "verdict": ["rejected"],
            "reasons": [["max_position", "daily_loss"]],
        }
    )
    wh.upsert("risk_verdicts", verdict)
    assert wh.read("risk_verdicts")["reasons"].to_list() == [["max_position", "daily_loss"]]
    with wh.connect() as con:
        assert con.execute("SELECT reasons FROM risk_verdicts").fetchall() == [
            (["max_position", "daily_loss"],)
        ]
        assert con.execute("SELECT count(*) FROM fills").fetchone() == (0,)  # typed view before any write


def test_the_decision_cache_is_one_file_keyed_by_model_and_prompt_hash(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    rows = pl.DataFrame(
        {
            "provider": ["local", "local", "openai"],
            "model_version": ["smollm2@1", "smollm2@1", "gpt@x"],
            "prompt_hash": ["aa", "bb", "aa"],
            "decision": ['{"action":"HOLD"}', '{"action":"BUY"}', '{"action":"SELL"}'],
            "latency_ms": [10.0, 12.0, 300.0],
        }
    )
    wh.upsert("decision_cache", rows)
    wh.upsert("decision_cache", rows.head(1).with_columns(pl.lit('{"action":"SELL"}').alias("decision")))
    assert [p.relative_to(tmp_path).as_posix() for p in _files(tmp_path)] == ["decision_cache/data.parquet"]
    back = wh.read("decision_cache")
    assert back.height == 3
    hit = back.filter((pl.col("model_version") == "smollm2@1") & (pl.col("prompt_hash") == "aa"))
    assert hit["decision"].to_list() == ['{"action":"SELL"}']
    with pytest.raises(ValueError, match="no time column"):
        wh.read("decision_cache", start=DAY1)


def test_the_sft_dataset_is_derived_by_decision_time(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    at = [DAY1 + i * HOUR for i in range(3)]
    examples = pl.DataFrame(
        {
            "symbol": ["BTC/USDT"] * 3,
            "at": at,
            "label_end": [t + 24 * HOUR for t in at],
            "split": ["train"] * 3,
            "prompt": ["p"] * 3,
            "response": ['{"action":"HOLD"}'] * 3,
            "action": ["HOLD"] * 3,
            "forward_return": [0.01, -0.02, 0.0],
        }
    )
    wh.upsert("sft_dataset", examples)
    wh.upsert("sft_dataset", examples.head(2))  # a relabelled rebuild drops the third example
    back = wh.read("sft_dataset")
    assert back["at"].to_list() == at[:2]
    assert {"prompt_version", "prompt_hash", "system_prompt"} <= set(back.columns)
    assert table_spec("sft_dataset").key == ("symbol", "at")


def test_a_module_can_register_its_own_table(tmp_path: Path, clean_registry: None) -> None:
    spec = TableSpec(
        "alerts",
        pl.Schema({"time": pl.Datetime("us", "UTC"), "run_id": pl.Utf8, "message": pl.Utf8}),
        ("run_id", "time"),
        "raw",
        partitioning=Partitioning.DAY,
        time_column="time",
    )
    register_table(spec)
    register_table(spec)  # the same spec again (a module imported twice) is fine
    with pytest.raises(ValueError, match="already registered"):
        register_table(
            TableSpec(
                "alerts", spec.schema, ("run_id",), "raw", time_column="time", partitioning=Partitioning.DAY
            )
        )
    wh = Warehouse(tmp_path)
    wh.upsert("alerts", pl.DataFrame({"time": [DAY1], "run_id": ["r"], "message": ["drawdown 5%"]}))
    with pytest.raises(ValueError, match="unexpected column"):
        wh.upsert("alerts", pl.DataFrame({"time": [DAY1], "run_id": ["r"], "level": ["warn"]}))
    with wh.connect() as con:
        assert con.execute("SELECT message FROM alerts").fetchall() == [("drawdown 5%",)]


def test_two_threads_journaling_the_same_table_lose_no_row(tmp_path) -> None:
    """A live session and its shadow books write the same journal partitions from two threads."""
    import threading
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from crypto_pipeline.warehouse import Warehouse

    start = datetime(2024, 8, 5, tzinfo=UTC)

    def write(run_id: str) -> None:
        warehouse = Warehouse(tmp_path)  # each thread its own object, as each journal has
        for i in range(15):
            rows = pl.DataFrame(
                {"time": [start + timedelta(minutes=i)], "run_id": [run_id], "equity": [1.0], "cash": [1.0]}
            ).with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))
            warehouse.upsert("equity", rows, views=False)

    threads = [threading.Thread(target=write, args=(f"run-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Warehouse(tmp_path).read("equity").height == 45
