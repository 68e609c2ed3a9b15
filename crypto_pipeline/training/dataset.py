"""The supervised fine-tuning dataset: one (prompt, response) example per (symbol, decision time), built
from the stored market states and labelled by what the market did next.

The prompt is exactly what the decision layer sends for that state (`SYSTEM_PROMPT` + `build_user_prompt`,
rebuilt from the stored `market_states` row through `state_from_row`), recorded with its version and hash.
The response is the label's decision written in the constrained-decoding grammar's form, so
`parse_decision` reads it back to the same decision and the model learns what it will be allowed to say.

Stored three ways: the warehouse table `sft_dataset` (`write_sft_dataset` / `read_sft_dataset`), a Hugging
Face `datasets` DatasetDict in chat-messages form (`save_hf_dataset`), and a dataset card (`SftDataset.card`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from crypto_pipeline.leakage import LookaheadError, assert_no_lookahead
from crypto_pipeline.llm.decision import Action, parse_decision
from crypto_pipeline.llm.prompts import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    build_messages,
    build_user_prompt,
    prompt_hash,
)
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.quality import SAMPLE_ROWS, CheckResult
from crypto_pipeline.state.build import market_state_table, state_from_row
from crypto_pipeline.timeutil import as_utc
from crypto_pipeline.training.labels import (
    DEFAULT_VOLATILITY_COLUMN,
    Thresholds,
    action_expr,
    fit_thresholds,
    format_response,
    forward_returns,
    label_decision,
    triple_barrier,
    volatility_scaled,
)
from crypto_pipeline.training.splits import SPLITS, SplitBoundaries, SplitReport, assign_splits

if TYPE_CHECKING:
    from datasets import DatasetDict

    from crypto_pipeline.warehouse import Warehouse

TABLE = "sft_dataset"
HF_DATASET_DIR = Path("datasets") / TABLE  # the HF dataset and its card, under the warehouse root
ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
# The columns of the warehouse table, in order (the issue's minimum plus what evaluation and the card use).
COLUMNS: tuple[str, ...] = (
    "symbol",
    "at",
    "label_end",
    "split",
    "prompt_version",
    "prompt_hash",
    "system_prompt",
    "prompt",
    "response",
    "action",
    "forward_return",
    "scaled_return",
    "confidence",
    "reasoning_source",
)


class DatasetError(ValueError):
    """The dataset cannot be built or used as asked (no states, an empty split, a missing class)."""


class DatasetConfig(BaseModel):
    """How examples are labelled and split. Defaults run on the recorded 2024 data."""

    model_config = ConfigDict(frozen=True)

    symbols: list[str] | None = Field(None, description="Symbols to use (None: every symbol with states).")
    decision_timeframe: str = Field("1h", description="The market states' decision bar; labels use its bars.")
    labels: Literal["triple_barrier", "return_terciles"] = Field(
        "triple_barrier",
        description="triple_barrier: which of the response's exits (take profit 4x, stop 2x the 1h ATR%) "
        "a long reaches first within the horizon, HOLD if neither (docs/training.md: a logistic regression "
        "on the state's numbers predicts it above chance); return_terciles: the volatility-scaled forward "
        "return cut at train quantiles (about as predictable as a coin).",
    )
    horizon_hours: int = Field(24, ge=1, description="Forward-return horizon.")
    embargo_hours: int = Field(24, ge=1, description="Embargo after each boundary; at least the horizon.")
    cutoff: datetime | None = Field(
        None, description="No label may end after this (None: the end of the stored data)."
    )
    train_end: datetime | None = Field(
        None, description="End of train labels (None: cutoff - test_days - val_days)."
    )
    val_end: datetime | None = Field(None, description="End of validation labels (None: cutoff - test_days).")
    val_days: float = Field(45.0, gt=0, description="Validation length when val_end/train_end are derived.")
    test_days: float = Field(45.0, gt=0, description="Test length when val_end is derived.")
    sell_share: float = Field(1 / 3, gt=0, lt=1, description="Share of train examples labelled SELL.")
    buy_share: float = Field(1 / 3, gt=0, lt=1, description="Share of train examples labelled BUY.")
    max_position_pct: float = Field(40.0, gt=0, le=100, description="BUY size at confidence 100.")
    volatility_column: str = Field(DEFAULT_VOLATILITY_COLUMN, description="ATR% column scaling returns.")
    teacher_max_examples: int | None = Field(
        200,
        ge=1,
        description="With a teacher: how many train examples (a seeded sample) it writes the reasoning "
        "of; None: every train example. Only train responses are learnt from, so only they are sent.",
    )

    @property
    def horizon(self) -> timedelta:
        return timedelta(hours=self.horizon_hours)

    @property
    def embargo(self) -> timedelta:
        return timedelta(hours=self.embargo_hours)

    def boundaries(self, data_end: datetime) -> SplitBoundaries:
        """The split boundaries: explicit ones where given, else rolling back from the cutoff."""
        end = as_utc(min(self.cutoff, data_end) if self.cutoff else data_end)
        rolling = SplitBoundaries.rolling(
            end, val_days=self.val_days, test_days=self.test_days, embargo=self.embargo
        )
        val_end = as_utc(self.val_end) if self.val_end else rolling.val_end
        train_end = as_utc(self.train_end) if self.train_end else val_end - timedelta(days=self.val_days)
        return SplitBoundaries(train_end=train_end, val_end=val_end, cutoff=end, embargo=self.embargo)


@dataclass
class SftDataset:
    """The examples (`frame`, one row per example, `COLUMNS`) and how they were made."""

    frame: pl.DataFrame
    thresholds: Thresholds
    boundaries: SplitBoundaries
    report: SplitReport
    config: DatasetConfig
    teacher: str | None = None
    teacher_cost_usd: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        return dataset_card(self.frame, self)

    def card_markdown(self) -> str:
        return card_markdown(self.card())


# --- building -----------------------------------------------------------------------------------------


def load_inputs(wh: Warehouse, config: DatasetConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(market states, decision-timeframe bars) from the warehouse."""
    tf = Timeframe.parse(config.decision_timeframe).value
    states = wh.read("market_states", symbols=config.symbols, timeframes=[tf])
    if states.is_empty():
        raise DatasetError(
            f"no market states ({tf}) in the warehouse {wh.root}"
            + (f" for {config.symbols}" if config.symbols else "")
            + "; materialize market_states first (the market_data job)"
        )
    bars = wh.read(
        "bars",
        symbols=config.symbols,
        timeframes=[tf],
        columns=["symbol", "timestamp", "open", "high", "low", "close"],
    )
    return states, bars


def build_sft_dataset(
    states: pl.DataFrame,
    bars: pl.DataFrame,
    config: DatasetConfig | None = None,
    *,
    teacher: DecisionProvider | None = None,
) -> SftDataset:
    """Label, split and render every usable market state.

    `states`: rows of the `market_states` table (or `market_state_table`); `bars`: the decision
    timeframe's bars (symbol, timestamp, open, close) covering the label windows. A state is usable when
    its price and volatility are known and every bar of its label window exists. `teacher` (off by
    default) rewrites the reasoning of examples where it agrees with the label; its cost is recorded.
    """
    config = config or DatasetConfig()
    if config.embargo < config.horizon:
        raise DatasetError(
            f"embargo_hours ({config.embargo_hours}) must be at least horizon_hours ({config.horizon_hours})"
        )
    if config.symbols is not None:
        states = states.filter(pl.col("symbol").is_in(config.symbols))
    vol = pl.col(config.volatility_column)
    usable = states.filter(pl.col("price").is_not_null() & vol.is_not_null() & (vol > 0)).unique(
        ["symbol", "at"], keep="last"
    )
    labelled = forward_returns(bars, usable.select("symbol", "at"), config.horizon, config.decision_timeframe)
    rows = (
        usable.join(labelled.drop_nulls("forward_return"), on=["symbol", "at"], how="inner")
        .with_columns(
            volatility_scaled(pl.col("forward_return"), vol, config.horizon, "1h").alias("scaled_return")
        )
        .sort("at", "symbol")
    )
    if rows.is_empty():
        raise DatasetError("no usable examples: no state has a known volatility and a complete label window")
    boundaries = config.boundaries(rows["label_end"].max())
    rows, report = assign_splits(rows, boundaries, config.horizon)
    train_scores = rows.filter(pl.col("split") == "train")["scaled_return"]
    if train_scores.len() < 3:
        raise DatasetError(
            f"only {train_scores.len()} training examples before {boundaries.train_end:%Y-%m-%d}: "
            "move train_end later or add data"
        )
    thresholds = fit_thresholds(train_scores, config.sell_share, config.buy_share)
    if config.labels == "triple_barrier":
        try:
            barriers = triple_barrier(
                bars,
                rows.select("symbol", "at", pl.col(config.volatility_column).alias("atr_pct")),
                config.horizon,
                config.decision_timeframe,
            )
        except ValueError as error:
            raise DatasetError(str(error)) from None
        rows = rows.join(barriers, on=["symbol", "at"], how="inner").drop_nulls("barrier")
        rows = rows.with_columns(pl.col("barrier").alias("action")).drop("barrier")
    else:
        rows = rows.with_columns(action_expr(pl.col("scaled_return"), thresholds).alias("action"))

    records = []
    for row in rows.iter_rows(named=True):
        user = build_user_prompt(state_from_row(row))
        decision = label_decision(
            row,
            Action(row["action"]),
            row["scaled_return"],
            thresholds,
            max_position_pct=config.max_position_pct,
            volatility_column=config.volatility_column,
        )
        records.append(
            {
                "prompt_hash": prompt_hash(user, SYSTEM_PROMPT),
                "prompt": user,
                "response": format_response(decision),
                "confidence": decision.confidence,
            }
        )
    frame = (
        rows.select("symbol", "at", "label_end", "split", "action", "forward_return", "scaled_return")
        .with_columns(pl.DataFrame(records).to_struct("r"))
        .unnest("r")
        .with_columns(
            pl.lit(PROMPT_VERSION).alias("prompt_version"),
            pl.lit(SYSTEM_PROMPT).alias("system_prompt"),
            pl.lit("rules").alias("reasoning_source"),
        )
    )
    dataset = SftDataset(frame.select(COLUMNS), thresholds, boundaries, report, config)
    if teacher is not None:
        dataset = with_teacher_reasoning(dataset, rows, teacher)
    return dataset


def with_teacher_reasoning(dataset: SftDataset, rows: pl.DataFrame, teacher: DecisionProvider) -> SftDataset:
    """Where the teacher's (valid) decision agrees with the label, its reasoning replaces the rule's.

    Only train examples are sent (the model learns from no other response), at most
    `config.teacher_max_examples` of them, a seeded sample. The label, numbers and prompt stay ours: the
    teacher only writes the sentence. The total cost of the calls (from each decision's `cost_usd`) is
    kept on the dataset and in its card.
    """
    frame = dataset.frame
    train = [i for i, split in enumerate(frame["split"]) if split == "train"]
    limit = dataset.config.teacher_max_examples
    if limit is not None and len(train) > limit:
        train = sorted(random.Random(0).sample(train, limit))
    states = [state_from_row(rows.row(i, named=True)) for i in train]
    decisions = decide_safely(teacher, states)
    cost = sum(d.cost_usd or 0.0 for d in decisions)
    responses = frame["response"].to_list()
    sources = frame["reasoning_source"].to_list()
    actions = frame["action"].to_list()
    for i, decision in zip(train, decisions, strict=True):
        if decision.valid and decision.action.value == actions[i] and decision.reasoning.strip():
            ours = parse_decision(responses[i])
            responses[i] = format_response(ours.model_copy(update={"reasoning": decision.reasoning.strip()}))
            sources[i] = "teacher"
    frame = frame.with_columns(
        pl.Series("response", responses, dtype=pl.String),
        pl.Series("reasoning_source", sources, dtype=pl.String),
    )
    name = getattr(teacher, "name", type(teacher).__name__)
    extra = dataset.extra | {"teacher_calls": len(train), "teacher_rewritten": sources.count("teacher")}
    return SftDataset(
        frame,
        dataset.thresholds,
        dataset.boundaries,
        dataset.report,
        dataset.config,
        name,
        cost,
        extra,
    )


# --- the warehouse table ------------------------------------------------------------------------------


def write_sft_dataset(wh: Warehouse, frame: pl.DataFrame, decision_timeframe: str = "1h") -> int:
    """Replace the warehouse table `sft_dataset` with `frame` (a derived table: rebuilt whole each time).

    The one place this module touches the warehouse layout: rows are filed like market states, by the
    decision bar's open time, so the table has the warehouse's (symbol, timeframe, timestamp) key.
    """
    tf = Timeframe.parse(decision_timeframe)
    stored = wh.read(TABLE, columns=["symbol"])["symbol"].unique().to_list() if wh.partitions(TABLE) else []
    rows = frame.with_columns(
        pl.lit(tf.value).alias("timeframe"), (pl.col("at") - tf.duration).alias("timestamp")
    )
    symbols = sorted(set(stored) | set(frame["symbol"].unique().to_list()))
    report = wh.replace(
        TABLE,
        rows,
        symbols=symbols,
        timeframes=[tf.value],
        first_day=date(1970, 1, 1),
        last_day=date(9999, 12, 31),
    )
    wh.refresh_views()
    return report.rows_given


def read_sft_dataset(wh: Warehouse, splits: list[str] | None = None) -> pl.DataFrame:
    """The stored `sft_dataset` rows (`COLUMNS`), sorted by decision time then symbol; empty if none."""
    if not wh.partitions(TABLE):
        return pl.DataFrame(schema={c: pl.String for c in COLUMNS})
    frame = wh.read(TABLE).select(COLUMNS)
    if splits is not None:
        frame = frame.filter(pl.col("split").is_in(splits))
    return frame.sort("at", "symbol")


# --- Hugging Face datasets: chat-messages form ---------------------------------------------------------


def messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat of one example: the decision layer's system and user messages, then the response."""
    return [
        *build_messages(row["prompt"], row["system_prompt"]),
        {"role": "assistant", "content": row["response"]},
    ]


def to_hf_dataset(frame: pl.DataFrame) -> DatasetDict:
    """A DatasetDict (train / validation / test) with a `messages` column and the example's metadata."""
    from datasets import Dataset, DatasetDict

    splits = {}
    for split in SPLITS:
        rows = frame.filter(pl.col("split") == split)
        splits[split] = Dataset.from_dict(
            {
                "messages": [messages(r) for r in rows.iter_rows(named=True)],
                "symbol": rows["symbol"].to_list(),
                "at": [t.isoformat() for t in rows["at"]],
                "label_end": [t.isoformat() for t in rows["label_end"]],
                "action": rows["action"].to_list(),
                "forward_return": rows["forward_return"].to_list(),
                "prompt_version": rows["prompt_version"].to_list(),
                "prompt_hash": rows["prompt_hash"].to_list(),
            }
        )
    return DatasetDict(splits)


def save_hf_dataset(frame: pl.DataFrame, path: Path, card: dict[str, Any] | None = None) -> Path:
    """`save_to_disk` the chat-messages DatasetDict, with the card beside it (README.md + card.json)."""
    path = Path(path)
    to_hf_dataset(frame).save_to_disk(str(path))
    if card is not None:
        (path / "card.json").write_text(json.dumps(card, indent=2, default=str))
        (path / "README.md").write_text(card_markdown(card))
    return path


# --- the card -----------------------------------------------------------------------------------------


def dataset_fingerprint(frame: pl.DataFrame) -> str:
    """A short hash of the examples' identity, prompts and responses: changes whenever the data does."""
    digest = hashlib.sha256()
    for row in (
        frame.select("symbol", "at", "split", "prompt_hash", "response").sort("at", "symbol").iter_rows()
    ):
        digest.update(json.dumps(row, default=str).encode())
    return digest.hexdigest()[:16]


def dataset_card(frame: pl.DataFrame, dataset: SftDataset | None = None) -> dict[str, Any]:
    """Counts, class balance and period per split, symbols, thresholds and boundaries."""
    per_split: dict[str, Any] = {}
    for split in SPLITS:
        rows = frame.filter(pl.col("split") == split)
        counts = dict(rows.group_by("action").len().iter_rows()) if rows.height else {}
        per_split[split] = {
            "examples": rows.height,
            "classes": {a: int(counts.get(a, 0)) for a in ACTIONS},
            "first_decision": rows["at"].min().isoformat() if rows.height else None,
            "last_decision": rows["at"].max().isoformat() if rows.height else None,
            "last_label_end": rows["label_end"].max().isoformat() if rows.height else None,
        }
    card: dict[str, Any] = {
        "name": TABLE,
        "examples": frame.height,
        "fingerprint": dataset_fingerprint(frame) if frame.height else None,
        "symbols": sorted(frame["symbol"].unique().to_list()),
        "prompt_versions": sorted(frame["prompt_version"].unique().to_list()),
        "splits": per_split,
    }
    if dataset is not None:
        config = dataset.config
        card.update(
            {
                "labels": config.labels,
                "horizon_hours": config.horizon_hours,
                "embargo_hours": config.embargo_hours,
                "decision_timeframe": config.decision_timeframe,
                "volatility_column": config.volatility_column,
                "thresholds": dataset.thresholds.as_dict(),
                "boundaries": dataset.boundaries.as_dict(),
                "removed": {
                    "purged": dataset.report.purged,
                    "embargoed": dataset.report.embargoed,
                    "after_cutoff": dataset.report.after_cutoff,
                },
                "teacher": dataset.teacher,
                "teacher_cost_usd": round(dataset.teacher_cost_usd, 6),
                "teacher_calls": dataset.extra.get("teacher_calls", 0),
                "teacher_rewritten": dataset.extra.get("teacher_rewritten", 0),
            }
        )
    return card


def stored_card(frame: pl.DataFrame, folder: Path) -> dict[str, Any]:
    """The card saved beside the HF dataset in `folder` when it describes exactly `frame` (same
    fingerprint): it alone knows the thresholds and the teacher and its cost. Otherwise the card that
    `frame` alone gives."""
    card = dataset_card(frame)
    path = Path(folder) / "card.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == card["fingerprint"]:
            return saved
    return card


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# {card['name']}",
        "",
        f"{card['examples']:,} examples of {', '.join(card['symbols'])}; prompt version(s) "
        f"{', '.join(card['prompt_versions'])}; fingerprint `{card.get('fingerprint')}`.",
        "",
    ]
    if "thresholds" in card:
        t, b = card["thresholds"], card["boundaries"]
        if card.get("labels", "return_terciles") == "triple_barrier":
            label = (
                f"Label: triple barrier over {card['horizon_hours']} h from the next bar's open: BUY when the "
                f"take profit (4x {card['volatility_column']}) is touched first, SELL when the stop (2x) is, "
                "HOLD when neither is."
            )
        else:
            label = (
                f"Label: forward return over {card['horizon_hours']} h from the next bar's open, divided by "
                f"{card['volatility_column']} x sqrt(horizon in hours); SELL below {t['sell_below']:.3f}, "
                f"BUY above {t['buy_above']:.3f} (fitted on train only)."
            )
        lines += [
            label,
            f"Boundaries: train labels end by {b['train_end']}, validation by {b['val_end']}, test by "
            f"{b['cutoff']}; embargo {b['embargo']}. Removed: {card['removed']}.",
            f"Teacher: {card['teacher'] or 'none'} (cost ${card['teacher_cost_usd']:.4f}, "
            f"{card.get('teacher_rewritten', 0)} of {card.get('teacher_calls', 0)} reasoning sentences kept).",
            "",
        ]
    lines += [
        "| split | examples | BUY | SELL | HOLD | first decision | last label end |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, info in card["splits"].items():
        c = info["classes"]
        lines.append(
            f"| {split} | {info['examples']:,} | {c['BUY']:,} | {c['SELL']:,} | {c['HOLD']:,} | "
            f"{info['first_decision']} | {info['last_label_end']} |"
        )
    return "\n".join(lines) + "\n"


# --- checks (blocking in the Dagster asset) ------------------------------------------------------------


def check_responses_parse(frame: pl.DataFrame) -> CheckResult:
    """Every response parses to a valid decision with the labelled action, and writing that decision
    back gives the same text (so the parsed decision is the one the response holds)."""
    bad = []
    for row in frame.select("symbol", "at", "action", "response").iter_rows(named=True):
        decision = parse_decision(row["response"])
        problem = None
        if not decision.valid:
            problem = decision.error
        elif decision.action.value != row["action"]:
            problem = f"parsed action {decision.action.value} != label {row['action']}"
        elif format_response(decision) != row["response"]:
            problem = "does not round-trip through parse_decision"
        if problem:
            bad.append({**row, "problem": problem})
    return CheckResult(
        name="responses_parse",
        passed=not bad,
        count=len(bad),
        total=frame.height,
        description="responses that parse_decision rejects, reads as another action, or does not round-trip",
        sample=pl.DataFrame(bad[:SAMPLE_ROWS]) if bad else pl.DataFrame(),
    )


def check_classes_per_split(frame: pl.DataFrame) -> CheckResult:
    """Each split holds every class (BUY, SELL, HOLD)."""
    missing = []
    for split in SPLITS:
        present = set(frame.filter(pl.col("split") == split)["action"].unique().to_list())
        missing += [{"split": split, "missing_class": a} for a in ACTIONS if a not in present]
    return CheckResult(
        name="classes_in_every_split",
        passed=not missing,
        count=len(missing),
        total=len(SPLITS) * len(ACTIONS),
        description="(split, class) pairs without a single example",
        sample=pl.DataFrame(missing) if missing else pl.DataFrame(),
    )


def check_prompts_point_in_time(
    frame: pl.DataFrame,
    features: pl.DataFrame,
    *,
    sample_size: int = 24,
    seed: int = 0,
    lookback: timedelta = timedelta(days=10),
) -> CheckResult:
    """No prompt holds information from after its `at`.

    For a seeded sample of examples, the market state is rebuilt from the long `features` table with
    `crypto_pipeline.leakage.assert_no_lookahead`: the prompts from data truncated at each sampled `at`
    (only bars closed by then) must equal the prompts from all the data, and the stored prompt must equal
    them too. `features` must cover [first sampled at - lookback, last sampled at] for the sampled symbols.
    """
    sample = _sample_rows(frame, sample_size, seed)
    durations = {tf.value: tf.duration for tf in Timeframe}
    duration = pl.col("timeframe").replace_strict(durations, return_dtype=pl.Duration("us"))
    features = features.with_columns((pl.col("timestamp") + duration).alias("close_time"))
    bad: list[dict[str, Any]] = []
    for (symbol,), points in sample.partition_by("symbol", as_dict=True).items():
        window = features.filter(
            (pl.col("symbol") == symbol)
            & (pl.col("close_time") > points["at"].min() - lookback)
            & (pl.col("close_time") <= points["at"].max())
        )

        def prompts(feats: pl.DataFrame, points: pl.DataFrame = points) -> pl.DataFrame:
            return _prompts_for(feats, points)

        try:
            assert_no_lookahead(
                prompts,
                window,
                points["at"].to_list(),
                time_column="close_time",
                key_columns=("symbol", "at"),
                output_time_column="at",
            )
        except LookaheadError as error:
            bad.append({"symbol": symbol, "at": None, "problem": str(error)[:300]})
            continue
        rebuilt = prompts(window).join(
            points.select("symbol", "at", "prompt"), on=["symbol", "at"], suffix="_stored"
        )
        for row in rebuilt.filter(pl.col("prompt").ne_missing(pl.col("prompt_stored"))).iter_rows(named=True):
            bad.append(
                {"symbol": symbol, "at": row["at"], "problem": "stored prompt differs from the rebuilt one"}
            )
    return CheckResult(
        name="prompts_point_in_time",
        passed=not bad,
        count=len(bad),
        total=sample.height,
        description="sampled prompts that change when the data after their decision time is removed, "
        "or that differ from the point-in-time rebuild",
        sample=pl.DataFrame(bad[:SAMPLE_ROWS], schema_overrides={"at": pl.Datetime("us", "UTC")})
        if bad
        else pl.DataFrame(),
    )


def _prompts_for(features: pl.DataFrame, points: pl.DataFrame) -> pl.DataFrame:
    """(symbol, at, prompt) for `points`, from the long features table (nothing stored is reused)."""
    if features.is_empty():
        return pl.DataFrame(schema={"symbol": pl.String, "at": pl.Datetime("us", "UTC"), "prompt": pl.String})
    table = market_state_table(features, points.select("symbol", "at"))
    table = table.filter(pl.col("price").is_not_null())
    texts = [build_user_prompt(state_from_row(row)) for row in table.iter_rows(named=True)]
    return table.select("symbol", "at").with_columns(pl.Series("prompt", texts, dtype=pl.String))


def _sample_rows(frame: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    if frame.height <= n:
        return frame
    picks = sorted(random.Random(seed).sample(range(frame.height), n))
    return frame[picks]
