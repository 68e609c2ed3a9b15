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
from dataclasses import dataclass
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
    if bars.schema["symbol"] not in (pl.String, pl.Categorical):
        raise ValueError(f"bars.symbol must be a string, got {bars.schema['symbol']}")
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
    taken += [name for name in bars.columns if name.startswith(_TMP)]
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


def _ordered_and_checked(bars: pl.DataFrame, timeframe: Timeframe) -> pl.DataFrame:
    """`bars` sorted by (symbol, timestamp), sorting only when needed (stored bars usually are), after
    rejecting duplicate bars and bars closer together than the timeframe."""
    symbol, ts = pl.col("symbol").cast(pl.String), pl.col("timestamp")
    same_symbol = symbol == symbol.shift(1)
    probe = (symbol > symbol.shift(1)) | (same_symbol & (ts > ts.shift(1)))
    in_order = bars.height < 2 or bool(bars.select(probe.slice(1).all()).item())
    ordered = bars if in_order else bars.sort("symbol", "timestamp", maintain_order=True)
    step = pl.when(same_symbol).then(ts - ts.shift(1))
    shortest = ordered.select(step.min()).item()
    if shortest is None or shortest >= timeframe.duration:
        return ordered
    example = ordered.filter(step == shortest).row(0, named=True)
    if shortest == timedelta(0):
        raise ValueError(
            f"duplicate bars: {example['symbol']} has two rows at {example['timestamp']}; deduplicate first"
        )
    raise ValueError(
        f"{example['symbol']} has bars {shortest} apart (at {example['timestamp']}), shorter than the "
        f"{timeframe.value} timeframe; pass the right timeframe or resample first"
    )


# --- computation -----------------------------------------------------------------------------------

_TMP = "__feat_"  # prefix of the working columns, dropped before returning


def _tmp(name: str) -> pl.Expr:
    return pl.col(f"{_TMP}{name}")


_IDX = _tmp("idx")  # bar number within its symbol, 0 for the first bar
_CLOSE, _HIGH, _LOW, _VOLUME = (_tmp(name) for name in ("close", "high", "low", "volume"))


def _per_symbol(expr: pl.Expr) -> pl.Expr:
    return expr.over("symbol")


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is zero or null (never inf or NaN)."""
    return pl.when(denominator != 0).then(numerator / denominator)


def _spans(bars: int, timeframe: Timeframe) -> pl.Expr:
    """True where this row and the row `bars` earlier of the same symbol are exactly `bars` steps apart."""
    return (_IDX >= bars) & (
        pl.col("timestamp") - pl.col("timestamp").shift(bars) == timeframe.duration * bars
    )


def _trailing_sum(cumulative: pl.Expr, bars: int) -> pl.Expr:
    """Sum of the last `bars` values, from a per-symbol cumulative sum; null until the window is full.

    Differences of one running sum make every window O(1); the sums restart per symbol, so a value never
    depends on another symbol's rows (which keeps results bit-identical when later rows are cut off).
    """
    return (
        pl.when(_IDX >= bars)
        .then(cumulative - cumulative.shift(bars))
        .when(_IDX == bars - 1)
        .then(cumulative)
    )


@dataclass(frozen=True)
class _Smoother:
    """One TA-Lib recursive average (EMA or Wilder's): starts at bar `seed_at` with the mean of the `window`
    values of `source` ending there, then ``avg += alpha * (value - avg)``."""

    name: str
    source: str
    seed_at: int
    window: int
    alpha: float

    def seed(self) -> pl.Expr:
        """On the seed bar, the mean of the window; null elsewhere, or when the window has a missing value.

        The sum runs in bar order like TA-Lib's and, being a per-symbol running sum, gives the same bits
        whatever the other symbols and the memory layout (a SIMD ``sum`` would not)."""
        in_window = _IDX.is_between(self.seed_at - self.window + 1, self.seed_at)
        values = pl.when(in_window).then(_tmp(self.source))
        complete = _per_symbol(values.is_not_null().cum_sum()) == self.window
        mean = _per_symbol(values.cum_sum()) / self.window
        return pl.when((_IDX == self.seed_at) & complete).then(mean).alias(self.name)


def _seeded_inputs(work: pl.DataFrame, smoothers: Sequence[_Smoother]) -> list[pl.Series]:
    """Each smoother's input: null before its seed bar, the seed on it, the source values after it.

    polars' ``ewm_mean(adjust=False)`` starts at its first non-null input, so smoothing these inputs per
    symbol reproduces TA-Lib's seeded recursion, vectorised. The seeds (one number per symbol) come from the
    first bars of each symbol and are scattered onto their rows, which is far cheaper than a full window.
    """
    first_bars = work.filter(_IDX <= max(s.seed_at for s in smoothers)).with_columns(
        s.seed() for s in smoothers
    )
    starts = work.select(pl.arg_where(_IDX == 0)).to_series()
    lengths = pl.concat([starts, pl.Series([work.height], dtype=starts.dtype)]).diff().slice(1)
    inputs = work.select(pl.when(_IDX > s.seed_at).then(_tmp(s.source)).alias(s.name) for s in smoothers)
    columns = []
    for smoother in smoothers:
        seed_rows = starts.filter(lengths > smoother.seed_at) + smoother.seed_at
        seeds = first_bars.filter(_IDX == smoother.seed_at)[smoother.name]
        column = inputs[smoother.name].clone()
        column.scatter(seed_rows, seeds)
        columns.append(column)
    return columns


def _smoothed(work: pl.DataFrame, smoothers: Sequence[_Smoother]) -> pl.DataFrame:
    work = work.with_columns(_seeded_inputs(work, smoothers))
    return work.with_columns(
        _per_symbol(pl.col(s.name).ewm_mean(alpha=s.alpha, adjust=False, ignore_nulls=True))
        for s in smoothers
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
    ordered = _ordered_and_checked(bars, tf)

    work = ordered.with_columns(
        _per_symbol(pl.int_range(pl.len(), dtype=pl.Int64)).alias(f"{_TMP}idx"),
        *(
            pl.col(name).cast(pl.Float64).fill_nan(None).alias(f"{_TMP}{name}")
            for name in _PRICE_VOLUME_COLUMNS
        ),
    )
    work = work.with_columns(_bar_inputs(ordered))
    work = _smoothed(work, _price_smoothers())
    work = work.with_columns((_tmp("macd_fast") - _tmp("macd_slow")).alias(f"{_TMP}macd_line"))
    signal = _Smoother(
        "macd_signal", "macd_line", seed_at=_MACD_LOOKBACK, window=MACD_SIGNAL, alpha=2.0 / (MACD_SIGNAL + 1)
    )
    work = _smoothed(work, [signal])
    has_missing = _has_missing_values(work)
    work = work.with_columns(_running_sums(count_missing=has_missing))
    work = work.with_columns(_features(tf, warm_table, has_missing=has_missing))
    return work.select(*bars.columns, *FEATURE_COLUMNS, "warm")


def _bar_inputs(bars: pl.DataFrame) -> list[pl.Expr]:
    """Per-bar inputs: change, gain, loss, true range, log return (null on bar 0), traded value."""
    previous_close = pl.when(_IDX >= 1).then(_CLOSE.shift(1))
    change = _CLOSE - previous_close
    true_range = pl.max_horizontal(
        _HIGH - _LOW, (_HIGH - previous_close).abs(), (_LOW - previous_close).abs()
    )
    price = typical = (_HIGH + _LOW + _CLOSE) / 3.0
    if "vwap" in bars.columns:
        price = pl.coalesce(pl.col("vwap").cast(pl.Float64).fill_nan(None), typical)
    return [
        change.clip(lower_bound=0.0).alias(f"{_TMP}gain"),
        (-change).clip(lower_bound=0.0).alias(f"{_TMP}loss"),
        # TA-Lib gives bar 0 no true range: it has no previous close.
        pl.when(_IDX >= 1).then(true_range).alias(f"{_TMP}true_range"),
        pl.when((_CLOSE > 0) & (previous_close > 0))
        .then((_CLOSE / previous_close).log())
        .alias(f"{_TMP}log_return"),
        (price * _VOLUME).alias(f"{_TMP}traded_value"),
    ]


def _price_smoothers() -> list[_Smoother]:
    smoothers = [
        _Smoother(f"ema_{n}", "close", seed_at=n - 1, window=n, alpha=2.0 / (n + 1)) for n in EMA_PERIODS
    ]
    for n in RSI_PERIODS:
        # The changes of bars 1..n seed the averages at bar n (bar 0 has no change).
        smoothers.append(_Smoother(f"{_TMP}avg_gain_{n}", "gain", seed_at=n, window=n, alpha=1.0 / n))
        smoothers.append(_Smoother(f"{_TMP}avg_loss_{n}", "loss", seed_at=n, window=n, alpha=1.0 / n))
    # TA-Lib seeds the fast EMA where the slow one starts, so both MACD averages begin at bar MACD_SLOW - 1.
    for name, n in (("macd_fast", MACD_FAST), ("macd_slow", MACD_SLOW)):
        smoothers.append(
            _Smoother(f"{_TMP}{name}", "close", seed_at=MACD_SLOW - 1, window=n, alpha=2.0 / (n + 1))
        )
    smoothers.append(
        _Smoother(
            f"atr_{ATR_PERIOD}", "true_range", seed_at=ATR_PERIOD, window=ATR_PERIOD, alpha=1.0 / ATR_PERIOD
        )
    )
    return smoothers


def _has_missing_values(work: pl.DataFrame) -> bool:
    return any(
        work[f"{_TMP}{name}"].null_count() for name in ("close", "high", "low", "volume", "traded_value")
    )


_WINDOWED_INPUTS = ("volume", "traded_value", "log_return", "log_return_sq")


def _missing_inputs() -> dict[str, pl.Expr]:
    """What makes a bar unusable for each windowed feature: the volatility needs positive closes, the volume
    ratio volumes, the VWAP traded values (price and volume)."""
    return {
        "close": _CLOSE.is_null() | (_CLOSE <= 0),
        "volume": _VOLUME.is_null(),
        "traded_value": _tmp("traded_value").is_null(),
    }


def _running_sums(*, count_missing: bool) -> list[pl.Expr]:
    """Per-symbol running sums behind the windowed features, with missing values counted as zero; when the
    input has missing values, running counts of them let the windows that contain one come out null."""
    inputs = {
        "volume": _VOLUME,
        "traded_value": _tmp("traded_value"),
        "log_return": _tmp("log_return"),
        "log_return_sq": _tmp("log_return") ** 2,
    }
    exprs = [
        _per_symbol(expr.fill_null(0.0).cum_sum()).alias(f"{_TMP}sum_{name}") for name, expr in inputs.items()
    ]
    if count_missing:
        exprs += [
            _per_symbol(missing.cast(pl.Int64).cum_sum()).alias(f"{_TMP}missing_{name}")
            for name, missing in _missing_inputs().items()
        ]
    return exprs


def _features(timeframe: Timeframe, warm_table: Mapping[str, int], *, has_missing: bool) -> list[pl.Expr]:
    exprs: list[pl.Expr] = []
    for n in RSI_PERIODS:
        avg_gain, avg_loss = _tmp(f"avg_gain_{n}"), _tmp(f"avg_loss_{n}")
        exprs.append((100.0 * _safe_ratio(avg_gain, avg_gain + avg_loss)).alias(f"rsi_{n}"))
    line = _tmp("macd_line")
    exprs += [
        pl.when(_IDX >= _MACD_LOOKBACK).then(line).alias("macd"),
        (line - pl.col("macd_signal")).alias("macd_hist"),
    ]

    # Bollinger bands need a numerically careful variance of prices: polars' rolling kernels, per symbol.
    mean = _per_symbol(_CLOSE.rolling_mean(BB_PERIOD))
    std = _per_symbol(_CLOSE.rolling_std(BB_PERIOD, ddof=0))
    exprs.append(
        _safe_ratio(_CLOSE - (mean - BB_STDDEVS * std), 2.0 * BB_STDDEVS * std).alias(f"bb_pctb_{BB_PERIOD}")
    )

    day_bars, hour_bars = _span_bars(timeframe, DAY), _span_bars(timeframe, HOUR)
    week_bars = timeframe.bars_per(WEEK)
    null = pl.lit(None, pl.Float64)

    def clean(name: str, rows: int) -> pl.Expr:
        """No missing `name` in the last `rows` bars (always true when the input has no missing value)."""
        return _trailing_sum(_tmp(f"missing_{name}"), rows) == 0 if has_missing else pl.lit(True)

    def simple_return(bars: int | None) -> pl.Expr:
        if bars is None:
            return null
        return pl.when(_spans(bars, timeframe)).then(_safe_ratio(_CLOSE, _CLOSE.shift(bars)) - 1.0)

    exprs += [simple_return(hour_bars).alias("ret_1h"), simple_return(day_bars).alias("ret_24h")]

    sums = {name: _tmp(f"sum_{name}") for name in _WINDOWED_INPUTS}
    if day_bars is not None and day_bars >= 2:
        s1 = _trailing_sum(sums["log_return"], day_bars)
        s2 = _trailing_sum(sums["log_return_sq"], day_bars)
        variance = ((s2 - s1 * s1 / day_bars) / (day_bars - 1)).clip(lower_bound=0.0)
        annualised = variance.sqrt() * math.sqrt(YEAR / timeframe.duration)
        returns_clean = _spans(day_bars, timeframe) & clean("close", day_bars + 1)
        exprs.append(pl.when(returns_clean).then(annualised).alias("realized_vol_24h"))
    else:
        exprs.append(null.alias("realized_vol_24h"))

    previous_week_volume = _trailing_sum(sums["volume"], week_bars).shift(1)
    exprs.append(
        pl.when(_spans(week_bars, timeframe) & clean("volume", week_bars + 1))
        .then(_safe_ratio(_VOLUME * week_bars, previous_week_volume))
        .alias("volume_vs_avg_7d")
    )

    if day_bars is not None:
        vwap_24h = _safe_ratio(
            _trailing_sum(sums["traded_value"], day_bars), _trailing_sum(sums["volume"], day_bars)
        )
        exprs.append(
            pl.when(_spans(day_bars - 1, timeframe) & clean("traded_value", day_bars))
            .then(_safe_ratio(_CLOSE, vwap_24h) - 1.0)
            .alias("vwap_distance")
        )
    else:
        exprs.append(null.alias("vwap_distance"))

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
    close_key = f"{_TMP}close_time"
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
