"""Re-run a model on the prompts a run journaled, and show where it now decides differently.

The journal keeps each decision's `MarketState` as JSON beside the exact prompt, so a replay rebuilds the
very state, renders the prompt again (a prompt that no longer renders the same is flagged: the template
changed since), and asks the provider through `decide_safely`, the call every other path makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.llm.prompts import PROMPT_VERSION, build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.registry import model_uri, version_of
from crypto_pipeline.state import MarketState
from crypto_pipeline.warehouse import Warehouse


@dataclass(frozen=True)
class ReplayReport:
    run: str
    provider: str
    rows: pl.DataFrame  # one row per replayed decision: before and after, and whether they differ

    @property
    def replayed(self) -> int:
        return self.rows.height

    @property
    def changed(self) -> int:
        return int(self.rows["changed"].sum()) if self.rows.height else 0

    def summary(self) -> dict[str, object]:
        rows = self.rows
        return {
            "run": self.run,
            "provider": self.provider,
            "replayed": self.replayed,
            "changed": self.changed,
            "changed_pct": round(100 * self.changed / self.replayed, 1) if self.replayed else 0.0,
            "valid_before": int(rows["valid_before"].sum()) if rows.height else 0,
            "valid_after": int(rows["valid_after"].sum()) if rows.height else 0,
            "prompt_changed": int(rows["prompt_changed"].sum()) if rows.height else 0,
        }


def journaled_decisions(warehouse: Warehouse, run: str, limit: int | None = None) -> pl.DataFrame:
    """The decisions `run` journaled with their state, oldest first. Raises when there are none."""
    if not warehouse.table_dir("decisions").exists():
        raise UserInputError(f"the warehouse at {warehouse.root} holds no journal (no decisions table)")
    rows = warehouse.read("decisions")
    runs = sorted(rows["run_id"].unique().drop_nulls().to_list())
    rows = rows.filter(pl.col("run_id") == run, pl.col("state").is_not_null()).sort("time", "symbol")
    if rows.is_empty():
        known = ", ".join(runs[-10:]) or "none"
        raise UserInputError(f"no journaled decisions with a state for run {run!r} (runs: {known})")
    return rows.head(limit) if limit else rows


def journaled_model(rows: pl.DataFrame) -> str | None:
    """The MLflow URI of the registered version the run decided with, if it used one (and only one)."""
    versions = {version_of(v) for v in rows["model_version"].drop_nulls().to_list()} - {None}
    if len(versions) != 1:
        return None
    return model_uri(versions.pop())


def replay_decisions(rows: pl.DataFrame, provider: DecisionProvider, run: str) -> ReplayReport:
    """Ask `provider` again on the journaled states of `rows` and compare with what was decided."""
    states = [MarketState.model_validate_json(text) for text in rows["state"]]
    decisions = decide_safely(provider, states)
    replayed = rows.select(
        "time",
        "symbol",
        pl.col("action").alias("before"),
        pl.col("valid").alias("valid_before"),
        pl.col("prompt_version").alias("prompt_version_before"),
    ).with_columns(
        pl.Series("after", [d.action.value for d in decisions], dtype=pl.Utf8),
        pl.Series("valid_after", [d.valid for d in decisions], dtype=pl.Boolean),
        pl.Series("confidence_after", [d.confidence for d in decisions], dtype=pl.Float64),
        pl.Series(
            "prompt_changed",
            [build_user_prompt(s) != p for s, p in zip(states, rows["prompt"], strict=True)],
            dtype=pl.Boolean,
        ),
        pl.lit(PROMPT_VERSION).alias("prompt_version_after"),
    )
    replayed = replayed.with_columns(changed=pl.col("before") != pl.col("after"))
    return ReplayReport(run, getattr(provider, "name", type(provider).__name__), replayed)
