"""Charts people would rather look at than read: PNG files (`feature_charts` writes them under the
warehouse's `reports/` folder), and `png_markdown`, the one way an asset shows a PNG in its metadata."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

if TYPE_CHECKING:
    from crypto_pipeline.warehouse import Warehouse


def plot_features(features: pl.DataFrame, symbol: str, timeframe: str, out: Path, days: int = 30) -> Path:
    """Three panels over the last `days`: close with EMA 21/50/200, RSI-14 (30/70 lines), MACD histogram.

    `features` is the long features table; only `symbol` at `timeframe` is drawn. Returns the PNG path.
    """
    rows = features.filter((pl.col("symbol") == symbol) & (pl.col("timeframe") == timeframe)).sort(
        "timestamp"
    )
    if rows.is_empty():
        raise ValueError(f"no {timeframe} features for {symbol} to plot")
    rows = rows.filter(pl.col("timestamp") >= rows["timestamp"].max() - timedelta(days=days))
    t = rows["timestamp"].to_list()

    fig, (price, rsi, macd) = plt.subplots(
        3, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]}, constrained_layout=True
    )
    price.plot(t, rows["close"], color="black", linewidth=1.0, label="close")
    for column, color in (("ema_21", "tab:blue"), ("ema_50", "tab:orange"), ("ema_200", "tab:red")):
        price.plot(t, rows[column], color=color, linewidth=0.9, label=column.replace("_", " ").upper())
    price.set_title(f"{symbol} {timeframe}: last {days} days of features")
    price.legend(loc="upper left", fontsize=8)
    price.grid(alpha=0.3)

    rsi.plot(t, rows["rsi_14"], color="tab:purple", linewidth=0.9)
    for level in (30, 70):
        rsi.axhline(level, color="grey", linestyle="--", linewidth=0.7)
    rsi.set_ylim(0, 100)
    rsi.set_ylabel("RSI 14")
    rsi.grid(alpha=0.3)

    hist = rows["macd_hist"].fill_null(0.0).to_list()
    macd.bar(t, hist, width=_bar_width(rows), color=["tab:green" if v >= 0 else "tab:red" for v in hist])
    macd.set_ylabel("MACD hist")
    macd.grid(alpha=0.3)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def feature_charts(
    warehouse: Warehouse, symbols: list[str], last_day: date, days: int = 30
) -> dict[str, Path]:
    """One PNG per symbol of the 1h features of the `days` up to `last_day` (included), written to
    `<warehouse>/reports/features_<symbol>_1h.png`; symbols without 1h features there get none."""
    end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)
    recent = warehouse.read(
        "features", symbols=symbols, timeframes=["1h"], start=end - timedelta(days=days), end=end
    )
    reports = Path(warehouse.root) / "reports"
    return {
        symbol: plot_features(
            recent, symbol, "1h", reports / f"features_{symbol.replace('/', '-')}_1h.png", days
        )
        for symbol in symbols
        if recent.filter(pl.col("symbol") == symbol).height
    }


def _bar_width(rows: pl.DataFrame) -> float:
    """Bar width in days (matplotlib's date unit): 80% of the median bar spacing."""
    steps = rows["timestamp"].diff().drop_nulls()
    if steps.is_empty():
        return 0.02
    return steps.median().total_seconds() / 86_400 * 0.8


def plot_equity_vs_buy_hold(
    times: list[datetime], equity: list[float], buy_hold: list[float], out: Path, title: str
) -> Path:
    """A strategy's equity against buy-and-hold of the same symbols from the same start; returns the PNG."""
    fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    ax.plot(times, equity, color="tab:blue", linewidth=1.2, marker=".", label="live equity")
    ax.plot(
        times, buy_hold, color="grey", linewidth=1.0, linestyle="--", label="buy and hold (equal weights)"
    )
    ax.set_title(title)
    ax.set_ylabel("USD")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_class_balance(card: dict[str, Any], out: Path) -> Path:
    """BUY/HOLD/SELL examples per split of a dataset card (`card["splits"][split]["classes"]`)."""
    splits = list(card["splits"])
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, action in enumerate(("BUY", "HOLD", "SELL")):
        counts = [card["splits"][s]["classes"][action] for s in splits]
        ax.bar([x + (i - 1) * 0.27 for x in range(len(splits))], counts, width=0.27, label=action)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def png_markdown(path: Path | str | None, alt: str = "") -> str:
    """A PNG as a Markdown image with its bytes inlined (a data URI), so that it shows wherever the
    Markdown is rendered (the Dagster UI's asset metadata); "(no plot)" when there is no such file."""
    if path is None or not Path(path).is_file():
        return "(no plot)"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt or Path(path).name}](data:image/png;base64,{data})"
