"""Technical features of OHLCV bars as polars expressions, computed per symbol without look-ahead.

Every value on the row of a bar that opens at ``t`` uses only that bar and the bars before it, so it is
known when the bar closes, at ``t + duration``. Indicators reproduce TA-Lib's definitions and seeding
exactly (they match ``talib`` to ~1e-12 on the same history), so quants can compare them with freqtrade or
any TA-Lib based tool:

- ``ema_<n>``: TA-Lib EMA, ``alpha = 2 / (n + 1)``, seeded at bar ``n - 1`` with the mean of the first ``n``
  closes.
- ``rsi_<n>``: Wilder's RSI (``alpha = 1 / n``); average gain and loss seeded at bar ``n`` with the mean of
  the first ``n`` changes. One deliberate difference: where both averages are zero (a perfectly flat market)
  TA-Lib returns 0, which reads as "extremely oversold"; we return null because RSI is undefined there.
- ``macd``, ``macd_signal``, ``macd_hist``: TA-Lib MACD(12, 26, 9). As in TA-Lib, the fast EMA is seeded at the
  slow EMA's first bar (25) with the mean of closes 14..25, the signal EMA at bar 33 with the mean of the MACD
  line over bars 25..33, and all three start at bar 33.
- ``atr_14``: Wilder's ATR seeded at bar 14 with the mean of the true ranges of bars 1..14 (bar 0 has no
  previous close, so TA-Lib gives it no true range).
- ``bb_pctb_20``: Bollinger %B, ``(close - lower) / (upper - lower)`` with bands at 2 population standard
  deviations (TA-Lib's BBANDS) around the 20-bar SMA; null when the bands collapse.

Time-named features count bars of the given timeframe (24h of 1h bars = 24 bars) and are null where those
bars do not span exactly the named period (a gap in the series), so a 25-hour move is never labelled 24h:

- ``ret_1h``, ``ret_24h``: simple close-to-close return over 1h / 24h of bars; null when the bar is longer
  than the period (``ret_1h`` on 4h and 1d bars), so on 1d bars ``ret_24h`` is the 1-bar return.
- ``realized_vol_24h``: sample standard deviation (ddof=1) of the log close-to-close returns of the bars
  spanning the last 24h, annualised with ``sqrt(bars per 365-day year)`` because crypto trades around the
  clock. On 1d bars a 24h window holds a single return, so it is null.
- ``volume_vs_avg_7d``: bar volume over the mean volume of the bars of the previous 7 days (current bar
  excluded).
- ``vwap_distance``: ``close / VWAP_24h - 1`` with ``VWAP_24h = sum(price * volume) / sum(volume)`` over the
  bars of the last 24h; the price is the bar's own ``vwap`` where that column exists and is not null, else the
  typical price ``(high + low + close) / 3``.

Divisions by zero (zero volume, zero range) and NaN or infinite inputs give null, never inf or NaN: a missing
value nulls the windows that contain it, and the recursive averages step over it. ``warm`` is True
once a symbol has enough history for every feature in its warm-up table (see `WARMUP_BARS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from crypto_pipeline.market.timeframes import Timeframe

REQUIRED_COLUMNS: tuple[str, ...] = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
_PRICE_VOLUME_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")

EMA_PERIODS: tuple[int, ...] = (9, 21, 50, 200)
RSI_PERIODS: tuple[int, ...] = (14, 21)
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
ATR_PERIOD = 14
BB_PERIOD, BB_STDDEVS = 20, 2.0

HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(days=7)
YEAR = timedelta(days=365)

FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"rsi_{n}" for n in RSI_PERIODS),
    "macd",
    "macd_signal",
    "macd_hist",
    *(f"ema_{n}" for n in EMA_PERIODS),
    f"atr_{ATR_PERIOD}",
    f"bb_pctb_{BB_PERIOD}",
    "realized_vol_24h",
    "ret_1h",
    "ret_24h",
    "volume_vs_avg_7d",
    "vwap_distance",
)

# TA-Lib's lookback: the index of the first valid value.
_MACD_LOOKBACK = MACD_SLOW - 1 + MACD_SIGNAL - 1

#: How much of its seed's weight a warm indicator may still carry. A recursive average forgets its seed as
#: ``(1 - alpha) ** bars``; at 1e-8 values no longer depend on where the history starts (far below 1e-6
#: relative). Daily history is too short for that bound (RSI-21 would need 400 days), so 1d bars accept 1%.
SEED_WEIGHT_TOLERANCE: dict[Timeframe, float] = {tf: 1e-8 for tf in Timeframe} | {Timeframe.D1: 1e-2}

#: ema_200 counts as warm once TA-Lib gives it a value (bar 199), not once its seed has faded, which takes
#: ~2,000 bars (85 days of 1h bars): it keeps converging from its SMA seed after it is "warm". On 1d bars even
#: 199 days is most of our history, so the 1d table leaves ema_200 out (opt in with ``warmup=``).
EMA_200_WARMUP_BARS = 199


def _converged_after(lookback: int, alpha: float, tolerance: float) -> int:
    """Bars until an average seeded at bar `lookback` keeps at most `tolerance` of its seed's weight."""
    return lookback + math.ceil(math.log(tolerance) / math.log(1.0 - alpha))


def _span_bars(timeframe: Timeframe, span: timedelta) -> int | None:
    """Bars of `timeframe` that make up `span`, or None when one bar is already longer than the span."""
    if timeframe.duration > span:
        return None
    return timeframe.bars_per(span)


def _warmup_table(timeframe: Timeframe) -> dict[str, int]:
    """Bars of history before each feature that exists at this timeframe is warm."""
    tol = SEED_WEIGHT_TOLERANCE[timeframe]
    table = {f"rsi_{n}": _converged_after(n, 1.0 / n, tol) for n in RSI_PERIODS}
    macd_bars = _converged_after(_MACD_LOOKBACK, 2.0 / (MACD_SLOW + 1), tol)
    table |= {"macd": macd_bars, "macd_signal": macd_bars, "macd_hist": macd_bars}
    table |= {f"ema_{n}": _converged_after(n - 1, 2.0 / (n + 1), tol) for n in EMA_PERIODS}
    table["ema_200"] = EMA_200_WARMUP_BARS
    table[f"atr_{ATR_PERIOD}"] = _converged_after(ATR_PERIOD, 1.0 / ATR_PERIOD, tol)
    table[f"bb_pctb_{BB_PERIOD}"] = BB_PERIOD - 1  # a plain window: exact once full
    day_bars, hour_bars = _span_bars(timeframe, DAY), _span_bars(timeframe, HOUR)
    if day_bars is not None and day_bars >= 2:  # a standard deviation needs two returns
        table["realized_vol_24h"] = day_bars
    if hour_bars is not None:
        table["ret_1h"] = hour_bars
    if day_bars is not None:
        table["ret_24h"] = day_bars
        table["vwap_distance"] = day_bars - 1
    table["volume_vs_avg_7d"] = timeframe.bars_per(WEEK)
    return {name: table[name] for name in FEATURE_COLUMNS if name in table}


def applicable_features(timeframe: str | Timeframe) -> tuple[str, ...]:
    """Feature columns that can hold values at this timeframe (not ``ret_1h`` on 4h bars, for example)."""
    return tuple(_warmup_table(Timeframe.parse(timeframe)))


def warmup_bars(timeframe: str | Timeframe) -> dict[str, int]:
    """The default warm-up table of a timeframe: feature -> bars of history a symbol needs before it.

    1h: rsi_14 263, rsi_21 399, macd/macd_signal/macd_hist 273, ema_9 91, ema_21 214, ema_50 510,
    ema_200 199, atr_14 263, bb_pctb_20 19, realized_vol_24h 24, ret_1h 1, ret_24h 24, volume_vs_avg_7d 168,
    vwap_distance 23: warm from bar 510 (21 days). 5m and 15m are warm after 7 days (the volume average), 4h
    from bar 510 (85 days), 1d from bar 165 (1% seed weight, no ema_200, realized_vol_24h or ret_1h).
    """
    tf = Timeframe.parse(timeframe)
    table = _warmup_table(tf)
    if tf is Timeframe.D1:
        del table["ema_200"]
    return table


#: The default warm-up table per timeframe (see `warmup_bars`); `compute_features(warmup=...)` overrides it.
WARMUP_BARS: dict[Timeframe, dict[str, int]] = {tf: warmup_bars(tf) for tf in Timeframe}


# --- input checks --------------------------------------------------------------------------------


def _validate_columns(bars: pl.DataFrame) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in bars.columns]
    if missing:
        raise ValueError(f"bars are missing required column(s) {missing}; got {bars.columns}")
    if not isinstance(bars.schema["timestamp"], pl.Datetime):
        raise ValueError(f"bars.timestamp must be a Datetime (UTC bar open), got {bars.schema['timestamp']}")
    if bars.schema["symbol"] != pl.String:
        raise ValueError(f"bars.symbol must be a string (pl.String), got {bars.schema['symbol']}")
    not_numeric = [
        name
        for name in (*_PRICE_VOLUME_COLUMNS, "vwap")
        if name in bars.columns and not bars.schema[name].is_numeric()
    ]
    if not_numeric:
        raise ValueError(f"bars column(s) {not_numeric} must be numeric")
    keys_with_nulls = [name for name in ("symbol", "timestamp") if bars[name].null_count()]
    if keys_with_nulls:
        raise ValueError(
            f"bars column(s) {keys_with_nulls} contain nulls; every bar needs a symbol and a timestamp"
        )
    taken = [name for name in (*FEATURE_COLUMNS, "warm") if name in bars.columns]
    if taken:
        raise ValueError(f"bars already hold feature/internal column(s) {taken}; drop them first")


def infer_timeframe(bars: pl.DataFrame) -> Timeframe:
    """The timeframe of `bars`, from the median step between consecutive timestamps of each symbol."""
    steps = (
        bars.lazy()
        .sort("symbol", "timestamp")
        .group_by("symbol")
        .agg(pl.col("timestamp").diff().median().alias("step"))
        .drop_nulls("step")
        .collect()
    )
    if steps.height == 0:
        raise ValueError("cannot infer the timeframe: no symbol has two bars; pass timeframe= explicitly")
    distinct = steps["step"].unique().sort().to_list()
    if len(distinct) > 1:
        examples = {str(step): steps.filter(pl.col("step") == step)["symbol"][0] for step in distinct}
        raise ValueError(
            f"ambiguous timeframe: symbols have different median bar steps {examples}; pass timeframe= explicitly"
        )
    by_duration = {tf.duration: tf for tf in Timeframe}
    if distinct[0] not in by_duration:
        valid = ", ".join(tf.value for tf in Timeframe)
        raise ValueError(
            f"median bar step {distinct[0]} matches no timeframe ({valid}); pass timeframe= explicitly"
        )
    return by_duration[distinct[0]]


# --- computation -----------------------------------------------------------------------------------
#
# Everything runs on a narrow working frame sorted by (symbol, timestamp). Per-symbol state is computed per
# symbol (rolling windows `.over()` it, the recursive averages by a compiled kernel that restarts at each
# symbol's first row), so a value never depends on another symbol's rows: results are bit-identical whether
# or not other symbols or later bars are present. Speed comes from few passes over the data: the rolling
# windows run in one `with_columns` over sorted, sliceable groups, with inputs that hold no nulls on clean
# data (polars' kernels take a faster path then), while the recursive averages run on another thread.

_IDX = pl.col("idx")  # bar number within its symbol, 0 for the first bar
_CLOSE, _HIGH, _LOW, _VOLUME = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")


def _per_symbol(expr: pl.Expr) -> pl.Expr:
    # Partitioning by the sorted symbol number rather than the symbol string lets polars slice the groups
    # (no hashing, no scatter back): measured about half the cost of the per-symbol kernels.
    return expr.over("symbol_number")


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is zero or null (never inf or NaN)."""
    return pl.when(denominator != 0).then(numerator / denominator)


@dataclass(frozen=True)
class _Layout:
    """Where each symbol's bars lie in the sorted working frame."""

    starts: pl.Series  # row of each symbol's first bar
    regular: bool  # no gaps: `n` rows back is always `n` timeframes back


def _spans(bars: int, timeframe: Timeframe, layout: _Layout) -> pl.Expr:
    """True where this row and the row `bars` earlier of the same symbol are exactly `bars` steps apart."""
    enough_history = _IDX >= bars
    if layout.regular or bars == 0:
        return enough_history
    return enough_history & (
        pl.col("timestamp") - pl.col("timestamp").shift(bars) == timeframe.duration * bars
    )


RECURSIVE_COLUMNS: tuple[str, ...] = FEATURE_COLUMNS[: FEATURE_COLUMNS.index(f"atr_{ATR_PERIOD}") + 1]


def _recursive_frame(work: pl.DataFrame, layout: _Layout) -> pl.DataFrame:
    """RSI, MACD, EMA and ATR (`RECURSIVE_COLUMNS`), null before each one's first TA-Lib value.

    These are recursive averages, which polars can only run through ``ewm_mean`` (about 3-4x slower per
    value than TA-Lib): a compiled kernel runs them all in one pass over the symbols' rows instead.
    """
    # Imported here: numba takes a while to import, and only computing features needs it.
    from crypto_pipeline.features.kernels import recursive_indicators

    values = recursive_indicators(
        work["close"].to_numpy(),
        work["high"].to_numpy(),
        work["low"].to_numpy(),
        layout.starts.to_numpy(),
        rsi_periods=RSI_PERIODS,
        macd_periods=(MACD_FAST, MACD_SLOW, MACD_SIGNAL),
        ema_periods=EMA_PERIODS,
        atr_period=ATR_PERIOD,
    )
    return pl.DataFrame(
        [pl.Series(name, row, nan_to_null=True) for name, row in zip(RECURSIVE_COLUMNS, values, strict=True)]
    )


def _first_bars(ordered: pl.DataFrame) -> pl.Series | None:
    """True on the first bar of each symbol, or None when the rows are not grouped by symbol in ascending
    order (then they need sorting). One string comparison pass; the order check runs on the first bars."""
    symbols = ordered["symbol"]
    first_bar = symbols.ne_missing(symbols.shift(1))
    first_symbols = symbols.filter(first_bar)
    grouped = first_symbols.is_sorted() and first_symbols.n_unique() == first_symbols.len()
    return first_bar if grouped else None


def _is_finite(column: pl.Series) -> bool:
    """No NaN or infinity (nulls are fine)."""
    return not column.dtype.is_float() or not (column.is_nan().any() or column.is_infinite().any())


def _working_frame(ordered: pl.DataFrame, first_bar: pl.Series) -> pl.DataFrame:
    """Keys, symbol number (0, 1, ... in row order), bar number, step from the previous bar of the symbol,
    and the Float64 inputs (NaN and infinities as null)."""

    def as_float(name: str) -> pl.Expr:
        value = pl.col(name).cast(pl.Float64)
        # NaN and infinities are missing values here; checking first spares a copy of clean columns.
        return value if _is_finite(ordered[name]) else pl.when(value.is_finite()).then(value).alias(name)

    inputs = [name for name in ("high", "low", "close", "volume", "vwap") if name in ordered.columns]
    work = ordered.select(
        "symbol",
        "timestamp",
        (first_bar.cum_sum() - 1).cast(pl.UInt32).set_sorted().alias("symbol_number"),
        *(as_float(name) for name in inputs),
    )
    work = work.with_columns(_per_symbol(pl.int_range(pl.len(), dtype=pl.Int32)).alias("idx"))
    return work.with_columns(pl.when(_IDX > 0).then(pl.col("timestamp").diff()).alias("step"))


def _prepare(bars: pl.DataFrame, timeframe: Timeframe) -> tuple[pl.DataFrame, pl.DataFrame, _Layout]:
    """`bars` sorted by (symbol, timestamp) (sorting only when needed: stored bars usually are sorted), the
    working frame with the per-bar derived inputs, and the layout of the symbols in it.

    Rejects duplicate bars and bars closer together than the timeframe (wrong timeframe, mixed data)."""

    def step_range(work: pl.DataFrame) -> tuple[timedelta | None, timedelta | None]:
        return work.select(pl.col("step").min().alias("shortest"), pl.col("step").max().alias("longest")).row(
            0
        )

    ordered, first_bar = bars, _first_bars(bars)
    if first_bar is not None:
        work = _working_frame(ordered, first_bar)
        shortest, longest = step_range(work)
    if first_bar is None or (shortest is not None and shortest < timedelta(0)):  # not in (symbol, time) order
        ordered = bars.sort("symbol", "timestamp", maintain_order=True)
        first_bar = _first_bars(ordered)
        assert first_bar is not None  # sorted rows are grouped by symbol
        work = _working_frame(ordered, first_bar)
        shortest, longest = step_range(work)
    if shortest is not None and shortest < timeframe.duration:
        example = work.filter(pl.col("step") == shortest).row(0, named=True)
        if shortest == timedelta(0):
            raise ValueError(
                f"duplicate bars: {example['symbol']} has two rows at {example['timestamp']}; deduplicate first"
            )
        raise ValueError(
            f"{example['symbol']} has bars {shortest} apart (at {example['timestamp']}), shorter than the "
            f"{timeframe.value} timeframe; pass the right timeframe or resample first"
        )
    regular = longest is None or longest == timeframe.duration
    layout = _Layout(first_bar.arg_true(), regular)
    return ordered, work.drop("step").with_columns(_bar_inputs(work, has_vwap="vwap" in work.columns)), layout


def compute_features(
    bars: pl.DataFrame,
    timeframe: str | Timeframe | None = None,
    *,
    warmup: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """`bars` plus `FEATURE_COLUMNS` (Float64) and `warm` (Boolean), sorted by symbol and timestamp.

    `bars` holds one or many symbols in any order: ``symbol``, ``timestamp`` (bar open, UTC), ``open``,
    ``high``, ``low``, ``close``, ``volume``, optionally ``vwap`` and ``trade_count``. `timeframe` defaults to
    the one the timestamps show. `warmup` replaces the timeframe's warm-up table (`WARMUP_BARS`): ``warm`` is
    True on the bars of a symbol that have at least that many earlier bars for every entry.
    """
    _validate_columns(bars)
    tf = infer_timeframe(bars) if timeframe is None else Timeframe.parse(timeframe)
    warm_table = dict(WARMUP_BARS[tf] if warmup is None else warmup)
    unknown = sorted(set(warm_table) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(f"warmup names unknown feature(s) {unknown}; expected names from FEATURE_COLUMNS")
    if bars.height == 0:
        empty = [pl.lit(None, pl.Float64).alias(name) for name in FEATURE_COLUMNS]
        return bars.with_columns(*empty, pl.lit(False).alias("warm"))
    ordered, work, layout = _prepare(bars, tf)

    # The recursive indicators' kernel releases the GIL: it runs on one core while polars computes the
    # windows on the others.
    with ThreadPoolExecutor(max_workers=1) as pool:
        recursive = pool.submit(_recursive_frame, work, layout)
        features = work.with_columns(_windows(tf)).select(_features(tf, layout, warm_table))
        return pl.concat([ordered, recursive.result(), features], how="horizontal")


def _bar_inputs(work: pl.DataFrame, *, has_vwap: bool) -> list[pl.Expr]:
    """Per-bar inputs of the windows: log return and traded value."""
    # A symbol's first bar has no previous close: its own close stands in (a zero return that no feature
    # reads, but that keeps the input of the rolling kernel null-free, its fast path).
    previous = pl.when(_IDX == 0).then(_CLOSE).otherwise(_CLOSE.shift(1))
    typical = (_HIGH + _LOW + _CLOSE) / 3.0
    price = pl.coalesce(pl.col("vwap"), typical) if has_vwap else typical
    positive_prices = (work["close"].min() or 0.0) > 0
    log_return = (_CLOSE / previous).log()
    return [
        (log_return if positive_prices else pl.when((_CLOSE > 0) & (previous > 0)).then(log_return)).alias(
            "log_return"
        ),
        (price * _VOLUME).alias("traded_value"),
    ]


def _windows(timeframe: Timeframe) -> list[pl.Expr]:
    """The per-symbol rolling windows. A window that holds a missing value gives null (polars' default
    ``min_samples`` is the window)."""
    day_bars, week_bars = _span_bars(timeframe, DAY), timeframe.bars_per(WEEK)
    windows = [
        _CLOSE.rolling_mean(BB_PERIOD).alias("bb_mean"),
        _CLOSE.rolling_std(BB_PERIOD, ddof=0).alias("bb_std"),
        _VOLUME.rolling_mean(week_bars).alias("volume_mean_7d"),
    ]
    if day_bars is not None:
        windows += [
            pl.col("traded_value").rolling_sum(day_bars).alias("traded_value_24h"),
            _VOLUME.rolling_sum(day_bars).alias("volume_24h"),
        ]
        if day_bars >= 2:
            windows.append(pl.col("log_return").rolling_std(day_bars, ddof=1).alias("log_return_std_24h"))
    return [_per_symbol(window) for window in windows]


def _features(timeframe: Timeframe, layout: _Layout, warm_table: Mapping[str, int]) -> list[pl.Expr]:
    """The features that are not recursive averages (see `_recursive_frame`), and ``warm``."""
    exprs: list[pl.Expr] = []
    # %B = (close - lower) / (upper - lower) with lower = mean - k * std and upper - lower = 2k * std.
    band_width = 2.0 * BB_STDDEVS * pl.col("bb_std")
    exprs.append(
        _safe_ratio(_CLOSE - pl.col("bb_mean") + 0.5 * band_width, band_width).alias(f"bb_pctb_{BB_PERIOD}")
    )

    day_bars, hour_bars = _span_bars(timeframe, DAY), _span_bars(timeframe, HOUR)
    week_bars = timeframe.bars_per(WEEK)
    null = pl.lit(None, pl.Float64)

    def simple_return(bars: int | None) -> pl.Expr:
        if bars is None:
            return null
        return pl.when(_spans(bars, timeframe, layout)).then(_safe_ratio(_CLOSE, _CLOSE.shift(bars)) - 1.0)

    if day_bars is not None and day_bars >= 2:
        annualised = pl.col("log_return_std_24h") * math.sqrt(YEAR / timeframe.duration)
        realized_vol = pl.when(_spans(day_bars, timeframe, layout)).then(annualised)
    else:
        realized_vol = null
    exprs += [
        realized_vol.alias("realized_vol_24h"),
        simple_return(hour_bars).alias("ret_1h"),
        simple_return(day_bars).alias("ret_24h"),
    ]
    previous_week_mean = pl.col("volume_mean_7d").shift(1)
    exprs.append(
        pl.when(_spans(week_bars, timeframe, layout))
        .then(_safe_ratio(_VOLUME, previous_week_mean))
        .alias("volume_vs_avg_7d")
    )
    if day_bars is not None:
        vwap_24h = _safe_ratio(pl.col("traded_value_24h"), pl.col("volume_24h"))
        vwap_distance = pl.when(_spans(day_bars - 1, timeframe, layout)).then(
            _safe_ratio(_CLOSE, vwap_24h) - 1.0
        )
    else:
        vwap_distance = null
    exprs.append(vwap_distance.alias("vwap_distance"))
    exprs.append((_IDX >= max(warm_table.values(), default=0)).alias("warm"))
    return exprs


# --- multi-timeframe join --------------------------------------------------------------------------


def join_higher_timeframes(
    base: pl.DataFrame,
    higher: Mapping[str | Timeframe, pl.DataFrame],
    base_timeframe: str | Timeframe,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """`base` plus the latest CLOSED higher-timeframe values of each symbol, suffixed ``_<tf>``.

    A higher bar (open T, duration D) reaches the base bar (open t, duration b) only if ``T + D <= t + b``:
    it has closed by the time the base bar closes, which is when the base row's values are known. Matching is
    an as-of join on close times within ``D`` (a higher bar older than that is stale, and gives nulls).
    `columns` defaults to the features defined at each higher timeframe plus ``warm``; ``warm_<tf>`` is False
    where nothing matched.
    """
    base_tf = Timeframe.parse(base_timeframe)
    for name in ("symbol", "timestamp"):
        if name not in base.columns:
            raise ValueError(f"base is missing column {name!r}")
    ts_dtype = base.schema["timestamp"]
    close_key = "__higher_close_time__"
    result = base.sort("symbol", "timestamp", maintain_order=True).with_columns(
        (pl.col("timestamp") + base_tf.duration).alias(close_key)
    )
    for tf_name, frame in higher.items():
        tf = Timeframe.parse(tf_name)
        if tf.duration <= base_tf.duration:
            raise ValueError(
                f"higher timeframe {tf.value} is not longer than the base timeframe {base_tf.value}"
            )
        wanted = list(columns) if columns is not None else [*applicable_features(tf), "warm"]
        missing = [name for name in ("symbol", "timestamp", *wanted) if name not in frame.columns]
        if missing:
            raise ValueError(f"the {tf.value} frame is missing column(s) {missing}")
        zone = getattr(frame.schema["timestamp"], "time_zone", None)
        if zone != getattr(ts_dtype, "time_zone", None):
            raise ValueError(f"the {tf.value} timestamps are in time zone {zone!r}, the base's in {ts_dtype}")
        renamed = {name: f"{name}_{tf.value}" for name in wanted}
        clashing = [name for name in renamed.values() if name in result.columns]
        if clashing:
            raise ValueError(f"base already has column(s) {clashing}")
        right = frame.select(
            "symbol",
            (pl.col("timestamp").cast(ts_dtype) + tf.duration).alias(close_key),
            *(pl.col(name).alias(new) for name, new in renamed.items()),
        ).sort("symbol", close_key)
        result = result.join_asof(
            right,
            on=close_key,
            by="symbol",
            strategy="backward",
            tolerance=tf.duration,
            check_sortedness=False,  # both sides are sorted by (symbol, close time) above
        )
        if "warm" in renamed:
            result = result.with_columns(pl.col(renamed["warm"]).fill_null(False))
    return result.drop(close_key)
