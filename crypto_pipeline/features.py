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

Divisions by zero (zero volume, zero range) and NaN inputs give null, never inf or NaN. ``warm`` is True
once a symbol has enough history for every feature in its warm-up table (see `WARMUP_BARS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

import polars as pl

from crypto_pipeline.market.timeframes import Timeframe

REQUIRED_COLUMNS: tuple[str, ...] = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS: tuple[str, ...] = ("vwap", "trade_count")
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

#: How much of its seed's error a warm value may still carry. A recursive smoother forgets its seed as
#: ``(1 - alpha) ** bars``; 1e-8 makes values independent of where the history starts (to far below 1e-6
#: relative). Daily history is too short for that bound (RSI-21 would need 400 days), so 1d bars accept 1%.
SEED_WEIGHT_TOLERANCE: dict[Timeframe, float] = {tf: 1e-8 for tf in Timeframe} | {Timeframe.D1: 1e-2}

#: Features the default `warm` flag ignores. ema_200 is TA-Lib-exact from bar 199 but converges from its seed
#: only after ~2,000 bars (85 days of 1h bars, years of 1d bars): opt in with `compute_features(warmup=...)`.
NOT_IN_DEFAULT_WARMUP: frozenset[str] = frozenset({"ema_200"})


def _converged_after(lookback: int, alpha: float, tolerance: float) -> int:
    """Bars until a smoother seeded at `lookback` keeps at most `tolerance` of its seed's weight."""
    return lookback + math.ceil(math.log(tolerance) / math.log(1.0 - alpha))


def _span_bars(timeframe: Timeframe, span: timedelta) -> int | None:
    """Bars of `timeframe` that make up `span`, or None when one bar is already longer than the span."""
    if timeframe.duration > span:
        return None
    return timeframe.bars_per(span)


def applicable_features(timeframe: str | Timeframe) -> tuple[str, ...]:
    """Feature columns that can hold values at this timeframe (``ret_1h`` cannot on 4h bars, for example)."""
    tf = Timeframe.parse(timeframe)
    return tuple(name for name in FEATURE_COLUMNS if name in _all_warmup_bars(tf))


def _all_warmup_bars(timeframe: Timeframe) -> dict[str, int]:
    """Per-feature history (bars) before a value is warm, for every feature defined at this timeframe."""
    tol = SEED_WEIGHT_TOLERANCE[timeframe]
    table: dict[str, int] = {}
    for n in RSI_PERIODS:
        table[f"rsi_{n}"] = _converged_after(n, 1.0 / n, tol)
    macd_bars = _converged_after(_MACD_LOOKBACK, 2.0 / (MACD_SLOW + 1), tol)
    table |= {"macd": macd_bars, "macd_signal": macd_bars, "macd_hist": macd_bars}
    for n in EMA_PERIODS:
        table[f"ema_{n}"] = _converged_after(n - 1, 2.0 / (n + 1), tol)
    table[f"atr_{ATR_PERIOD}"] = _converged_after(ATR_PERIOD, 1.0 / ATR_PERIOD, tol)
    table[f"bb_pctb_{BB_PERIOD}"] = BB_PERIOD - 1  # a plain window: exact once full
    day_bars = _span_bars(timeframe, DAY)
    hour_bars = _span_bars(timeframe, HOUR)
    if day_bars is not None and day_bars >= 2:  # a standard deviation needs two returns
        table["realized_vol_24h"] = day_bars
    if hour_bars is not None:
        table["ret_1h"] = hour_bars
    if day_bars is not None:
        table["ret_24h"] = day_bars
        table["vwap_distance"] = day_bars - 1
    table["volume_vs_avg_7d"] = timeframe.bars_per(WEEK)
    return table


def warmup_bars(timeframe: str | Timeframe) -> dict[str, int]:
    """The default warm-up table of a timeframe: feature -> bars of history a symbol needs.

    For 1h bars: rsi_14 263, rsi_21 399, macd* 282, ema_9 91, ema_21 214, ema_50 510, atr_14 263,
    bb_pctb_20 19, realized_vol_24h 24, ret_1h 1, ret_24h 24, volume_vs_avg_7d 168, vwap_distance 23,
    so 1h rows are warm from bar 510 (21 days); 5m and 15m rows from 7 days (the volume average), 4h rows
    from bar 510 (85 days), 1d rows from bar 165 (the 1% tolerance).
    """
    tf = Timeframe.parse(timeframe)
    return {name: bars for name, bars in _all_warmup_bars(tf).items() if name not in NOT_IN_DEFAULT_WARMUP}


#: The default warm-up table per timeframe (see `warmup_bars`); `compute_features(warmup=...)` overrides it.
WARMUP_BARS: dict[Timeframe, dict[str, int]] = {tf: warmup_bars(tf) for tf in Timeframe}


# --- input checks --------------------------------------------------------------------------------


def _validate_columns(bars: pl.DataFrame) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in bars.columns]
    if missing:
        raise ValueError(f"bars are missing required column(s) {missing}; got {bars.columns}")
    if not isinstance(bars.schema["timestamp"], pl.Datetime):
        raise ValueError(f"bars.timestamp must be a Datetime (UTC bar open), got {bars.schema['timestamp']}")
    not_numeric = [
        name
        for name in (*_PRICE_VOLUME_COLUMNS, "vwap")
        if name in bars.columns and not bars.schema[name].is_numeric()
    ]
    if not_numeric:
        raise ValueError(f"bars column(s) {not_numeric} must be numeric")
    temporary = [name for name in bars.columns if name.startswith(_TMP)]
    clashing = [name for name in (*FEATURE_COLUMNS, "warm") if name in bars.columns]
    if temporary or clashing:
        raise ValueError(f"bars already hold feature/internal column(s) {temporary + clashing}; drop them first")


def _median_steps(bars: pl.DataFrame) -> pl.DataFrame:
    return (
        bars.sort("symbol", "timestamp")
        .group_by("symbol")
        .agg(
            pl.col("timestamp").diff().median().alias("median_step"),
            pl.col("timestamp").diff().min().alias("min_step"),
        )
        .drop_nulls("median_step")
    )


def infer_timeframe(bars: pl.DataFrame) -> Timeframe:
    """The timeframe of `bars`, from the median step between consecutive timestamps of each symbol."""
    steps = _median_steps(bars)
    if steps.height == 0:
        raise ValueError("cannot infer the timeframe: no symbol has two bars; pass timeframe= explicitly")
    by_duration = {tf.duration: tf for tf in Timeframe}
    distinct = steps["median_step"].unique().sort().to_list()
    if len(distinct) > 1:
        examples = {str(step): steps.filter(pl.col("median_step") == step)["symbol"][0] for step in distinct}
        raise ValueError(
            f"ambiguous timeframe: symbols have different median bar steps {examples}; pass timeframe= explicitly"
        )
    step = distinct[0]
    if step not in by_duration:
        valid = ", ".join(tf.value for tf in Timeframe)
        raise ValueError(f"median bar step {step} matches no timeframe ({valid}); pass timeframe= explicitly")
    return by_duration[step]


def _check_spacing(bars: pl.DataFrame, timeframe: Timeframe) -> None:
    """Reject duplicates and bars closer together than the timeframe (wrong timeframe or mixed data)."""
    too_close = _median_steps(bars).filter(pl.col("min_step") < timeframe.duration)
    if too_close.height == 0:
        return
    row = too_close.row(0, named=True)
    if row["min_step"] == timedelta(0):
        raise ValueError(f"duplicate (symbol, timestamp) rows, e.g. for {row['symbol']}; deduplicate the bars first")
    raise ValueError(
        f"{row['symbol']} has bars {row['min_step']} apart, shorter than the {timeframe.value} timeframe; "
        "pass the right timeframe or resample first"
    )


# --- expressions -----------------------------------------------------------------------------------

_TMP = "__feat_"  # prefix of the working columns, dropped before returning
_IDX = pl.col(f"{_TMP}idx")  # bar number within its symbol, 0 for the first bar
_CLOSE, _HIGH, _LOW, _VOLUME = (pl.col(f"{_TMP}{name}") for name in ("close", "high", "low", "volume"))


def _per_symbol(expr: pl.Expr) -> pl.Expr:
    return expr.over("symbol")


def _seeded_smoother(values: pl.Expr, *, seed_at: int, window: int, alpha: float) -> pl.Expr:
    """TA-Lib's recursive averages (EMA, Wilder): start at bar `seed_at` with the mean of the `window` values
    ending there, then ``avg = avg + alpha * (value - avg)``.

    polars' ``ewm_mean(adjust=False)`` starts at its first non-null input, so nulling the bars before the seed
    and putting the seed in its place gives TA-Lib's recursion, vectorised.
    """
    seeded = (
        pl.when(pl.int_range(pl.len()) < seed_at)
        .then(None)
        .when(pl.int_range(pl.len()) == seed_at)
        .then(values.slice(seed_at - window + 1, window).mean())
        .otherwise(values)
    )
    return _per_symbol(seeded.ewm_mean(alpha=alpha, adjust=False, ignore_nulls=True))


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is zero or null (never inf or NaN)."""
    return pl.when(denominator != 0).then(numerator / denominator)


def _spans(bars: int, timeframe: Timeframe) -> pl.Expr:
    """True where the row and the row `bars` earlier of the same symbol are exactly `bars` steps apart."""
    return (_IDX >= bars) & (
        pl.col("timestamp") - pl.col("timestamp").shift(bars) == pl.lit(timeframe.duration * bars)
    )


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
    True from the first bar of a symbol at which it has at least that many earlier bars for every entry.
    """
    _validate_columns(bars)
    tf = infer_timeframe(bars) if timeframe is None else Timeframe.parse(timeframe)
    warm_table = dict(WARMUP_BARS[tf] if warmup is None else warmup)
    unknown = sorted(set(warm_table) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(f"warmup names unknown feature(s) {unknown}; expected names from FEATURE_COLUMNS")
    ordered = bars.sort("symbol", "timestamp", maintain_order=True)
    if ordered.height == 0:
        return ordered.with_columns(
            *(pl.lit(None, pl.Float64).alias(name) for name in FEATURE_COLUMNS), pl.lit(False).alias("warm")
        )
    _check_spacing(ordered, tf)

    work = ordered.with_columns(
        _per_symbol(pl.int_range(pl.len(), dtype=pl.Int64)).alias(f"{_TMP}idx"),
        *(pl.col(name).cast(pl.Float64).fill_nan(None).alias(f"{_TMP}{name}") for name in _PRICE_VOLUME_COLUMNS),
    )
    work = work.with_columns(*_changes(tf), _traded_value(ordered))
    work = work.with_columns(_smoothed(tf))
    work = work.with_columns(_macd_signal())
    work = work.with_columns(_final_features(tf, warm_table))
    return work.select(*bars.columns, *FEATURE_COLUMNS, "warm")


def _changes(timeframe: Timeframe) -> list[pl.Expr]:
    """Per-bar inputs of the indicators: change, gain, loss, true range, log return (null on bar 0)."""
    previous_close = pl.when(_IDX >= 1).then(_CLOSE.shift(1))
    change = _CLOSE - previous_close
    return [
        change.clip(lower_bound=0.0).alias(f"{_TMP}gain"),
        (-change).clip(lower_bound=0.0).alias(f"{_TMP}loss"),
        pl.max_horizontal(
            _HIGH - _LOW, (_HIGH - previous_close).abs(), (_LOW - previous_close).abs()
        ).alias(f"{_TMP}true_range"),
        pl.when((_CLOSE > 0) & (previous_close > 0))
        .then((_CLOSE / previous_close).log())
        .alias(f"{_TMP}log_return"),
    ]


def _traded_value(bars: pl.DataFrame) -> pl.Expr:
    """price * volume of each bar, the price being the bar's vwap when present, else the typical price."""
    typical = (_HIGH + _LOW + _CLOSE) / 3.0
    price = typical
    if "vwap" in bars.columns:
        price = pl.coalesce(pl.col("vwap").cast(pl.Float64).fill_nan(None), typical)
    return (price * _VOLUME).alias(f"{_TMP}traded_value")


def _smoothed(timeframe: Timeframe) -> list[pl.Expr]:
    gain, loss, true_range = (pl.col(f"{_TMP}{name}") for name in ("gain", "loss", "true_range"))
    exprs: list[pl.Expr] = []
    for n in EMA_PERIODS:
        exprs.append(_seeded_smoother(_CLOSE, seed_at=n - 1, window=n, alpha=2.0 / (n + 1)).alias(f"ema_{n}"))
    for n in RSI_PERIODS:
        # gains/losses of bars 1..n seed the averages at bar n (bar 0 has no change).
        exprs.append(_seeded_smoother(gain, seed_at=n, window=n, alpha=1.0 / n).alias(f"{_TMP}avg_gain_{n}"))
        exprs.append(_seeded_smoother(loss, seed_at=n, window=n, alpha=1.0 / n).alias(f"{_TMP}avg_loss_{n}"))
    # TA-Lib seeds the fast EMA where the slow one starts, so both lines begin at bar MACD_SLOW - 1.
    macd_start = MACD_SLOW - 1
    exprs.append(
        _seeded_smoother(_CLOSE, seed_at=macd_start, window=MACD_FAST, alpha=2.0 / (MACD_FAST + 1)).alias(
            f"{_TMP}macd_fast"
        )
    )
    exprs.append(
        _seeded_smoother(_CLOSE, seed_at=macd_start, window=MACD_SLOW, alpha=2.0 / (MACD_SLOW + 1)).alias(
            f"{_TMP}macd_slow"
        )
    )
    exprs.append(
        _seeded_smoother(true_range, seed_at=ATR_PERIOD, window=ATR_PERIOD, alpha=1.0 / ATR_PERIOD).alias(
            f"atr_{ATR_PERIOD}"
        )
    )
    return exprs


def _macd_signal() -> list[pl.Expr]:
    line = pl.col(f"{_TMP}macd_fast") - pl.col(f"{_TMP}macd_slow")
    signal = _seeded_smoother(line, seed_at=_MACD_LOOKBACK, window=MACD_SIGNAL, alpha=2.0 / (MACD_SIGNAL + 1))
    return [line.alias(f"{_TMP}macd_line"), signal.alias("macd_signal")]


def _final_features(timeframe: Timeframe, warm_table: Mapping[str, int]) -> list[pl.Expr]:
    exprs: list[pl.Expr] = []
    for n in RSI_PERIODS:
        avg_gain, avg_loss = pl.col(f"{_TMP}avg_gain_{n}"), pl.col(f"{_TMP}avg_loss_{n}")
        exprs.append((100.0 * _safe_ratio(avg_gain, avg_gain + avg_loss)).alias(f"rsi_{n}"))
    macd_ready = _IDX >= _MACD_LOOKBACK
    line = pl.col(f"{_TMP}macd_line")
    exprs += [
        pl.when(macd_ready).then(line).alias("macd"),
        (line - pl.col("macd_signal")).alias("macd_hist"),
    ]

    mean = _per_symbol(_CLOSE.rolling_mean(BB_PERIOD))
    std = _per_symbol(_CLOSE.rolling_std(BB_PERIOD, ddof=0))
    lower = mean - BB_STDDEVS * std
    exprs.append(_safe_ratio(_CLOSE - lower, 2.0 * BB_STDDEVS * std).alias(f"bb_pctb_{BB_PERIOD}"))

    day_bars = _span_bars(timeframe, DAY)
    hour_bars = _span_bars(timeframe, HOUR)
    week_bars = timeframe.bars_per(WEEK)
    null = pl.lit(None, pl.Float64)

    def simple_return(bars: int | None) -> pl.Expr:
        if bars is None:
            return null
        return pl.when(_spans(bars, timeframe)).then(_safe_ratio(_CLOSE, _CLOSE.shift(bars)) - 1.0)

    exprs += [simple_return(hour_bars).alias("ret_1h"), simple_return(day_bars).alias("ret_24h")]

    if day_bars is not None and day_bars >= 2:
        per_year = YEAR / timeframe.duration
        log_return = pl.col(f"{_TMP}log_return")
        vol = _per_symbol(log_return.rolling_std(day_bars, ddof=1)) * math.sqrt(per_year)
        exprs.append(pl.when(_spans(day_bars, timeframe)).then(vol).alias("realized_vol_24h"))
    else:
        exprs.append(null.alias("realized_vol_24h"))

    previous_week_mean = _per_symbol(_VOLUME.rolling_mean(week_bars)).shift(1)
    exprs.append(
        pl.when(_spans(week_bars, timeframe))
        .then(_safe_ratio(_VOLUME, previous_week_mean))
        .alias("volume_vs_avg_7d")
    )

    if day_bars is not None:
        traded = _per_symbol(pl.col(f"{_TMP}traded_value").rolling_sum(day_bars))
        volume = _per_symbol(_VOLUME.rolling_sum(day_bars))
        vwap_24h = _safe_ratio(traded, volume)
        exprs.append(
            pl.when(_spans(day_bars - 1, timeframe))
            .then(_safe_ratio(_CLOSE, vwap_24h) - 1.0)
            .alias("vwap_distance")
        )
    else:
        exprs.append(null.alias("vwap_distance"))

    needed = max(warm_table.values(), default=0)
    exprs.append((_IDX >= needed).alias("warm"))
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
    close_key = f"{_TMP}close_time"
    result = base.sort("symbol", "timestamp", maintain_order=True).with_columns(
        (pl.col("timestamp") + base_tf.duration).alias(close_key)
    )
    for tf_name, frame in higher.items():
        tf = Timeframe.parse(tf_name)
        if tf.duration <= base_tf.duration:
            raise ValueError(f"higher timeframe {tf.value} is not longer than the base timeframe {base_tf.value}")
        wanted = list(columns) if columns is not None else [*applicable_features(tf), "warm"]
        missing = [name for name in ("symbol", "timestamp", *wanted) if name not in frame.columns]
        if missing:
            raise ValueError(f"the {tf.value} frame is missing column(s) {missing}")
        renamed = {name: f"{name}_{tf.value}" for name in wanted}
        clashing = [name for name in renamed.values() if name in result.columns]
        if clashing:
            raise ValueError(f"base already has column(s) {clashing}")
        right = (
            frame.select(
                "symbol",
                (pl.col("timestamp").cast(ts_dtype) + tf.duration).alias(close_key),
                *(pl.col(name).alias(new) for name, new in renamed.items()),
            )
            .sort("symbol", close_key)
        )
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
