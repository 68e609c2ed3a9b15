"""What a model's decisions look like as a whole: how often each action, how confident, how varied the
reasoning. A valid-output rate says whether the answers parse; this says whether they are answers. A
model that says HOLD every time, with the same sentence and full confidence, is 100% valid and useless.

`DecisionProfile.of(decisions)` reads `TradeDecision`s, `DecisionProfile.from_columns(...)` rows of a
journal or a predictions table. The evaluation, the walk-forward reports and the promotion gate share it,
so the figures have one definition and one set of names (`as_metrics`)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from crypto_pipeline.llm.decision import Action, TradeDecision

ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)  # BUY, SELL, HOLD
_SPACE = re.compile(r"\s+")


def normalize_reasoning(text: str | None) -> str:
    """The reasoning as compared: case, runs of white space and trailing punctuation do not make two
    sentences different (numbers do)."""
    return _SPACE.sub(" ", (text or "").casefold()).strip().rstrip(".!;, ").strip()


@dataclass(frozen=True)
class DecisionProfile:
    """The decisions of one model as a whole. Shares are of all `n` decisions (invalid ones included:
    an invalid answer is a HOLD with empty reasoning). With no decisions every figure is 0."""

    n: int
    shares: dict[str, float] = field(hash=False)  # BUY / SELL / HOLD -> share of n
    mean_confidence: float
    distinct_reasoning_share: float  # distinct normalized reasoning strings / n
    top_reasoning_share: float  # share of n given the most common reasoning
    invalid_rate: float
    top_reasoning: str = ""  # the most common reasoning as first written (for the words)

    @classmethod
    def of(cls, decisions: Iterable[TradeDecision]) -> DecisionProfile:
        decisions = list(decisions)
        return cls.from_columns(
            [d.action for d in decisions],
            [d.confidence for d in decisions],
            [d.reasoning for d in decisions],
            valid=[d.valid for d in decisions],
        )

    @classmethod
    def from_columns(
        cls,
        actions: Sequence[str | Action],
        confidences: Sequence[float | None],
        reasonings: Sequence[str | None],
        valid: Sequence[bool | None] | None = None,
    ) -> DecisionProfile:
        """From parallel columns (a journal's or a predictions table's rows). A missing confidence is left
        out of the mean; a missing `valid` column counts every row valid."""
        actions = [str(a).strip().upper() for a in actions]
        if not len(actions) == len(confidences) == len(reasonings):
            raise ValueError(
                f"columns of unequal length: {len(actions)} actions, {len(confidences)} confidences, "
                f"{len(reasonings)} reasonings"
            )
        if valid is not None and len(valid) != len(actions):
            raise ValueError(f"columns of unequal length: {len(actions)} actions, {len(valid)} valid flags")
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}: expected {', '.join(ACTIONS)}")
        n = len(actions)
        counts = Counter(actions)
        known = [float(c) for c in confidences if c is not None]
        written: dict[str, str] = {}
        said = Counter()
        for text in reasonings:
            key = normalize_reasoning(text)
            said[key] += 1
            written.setdefault(key, (text or "").strip())
        top, top_n = said.most_common(1)[0] if said else ("", 0)
        return cls(
            n=n,
            shares={a: counts[a] / n if n else 0.0 for a in ACTIONS},
            mean_confidence=sum(known) / len(known) if known else 0.0,
            distinct_reasoning_share=len(said) / n if n else 0.0,
            top_reasoning_share=top_n / n if n else 0.0,
            invalid_rate=(sum(v is False for v in valid) / n if n else 0.0) if valid is not None else 0.0,
            top_reasoning=written.get(top, ""),
        )

    @classmethod
    def pooled(cls, parts: Sequence[DecisionProfile]) -> DecisionProfile:
        """Several runs' profiles as one, when only their figures are left (stored per-fold results).
        Action shares, mean confidence and invalid rate are exact (weighted by n). The reasoning figures
        cannot be pooled from shares (the same sentence may recur across parts), so they are bounded in
        the model's favour: the most common sentence overall is said at least as often as the most
        common one of any single part (`top_reasoning_share` is that lower bound), and there are no more
        distinct sentences than the parts' added up (`distinct_reasoning_share` is that upper bound).
        Exact for one part. NaN reasoning figures in any part (unknown) make the pooled ones NaN."""
        parts = [p for p in parts if p.n]
        if len(parts) == 1:
            return parts[0]
        n = sum(p.n for p in parts)
        if not n:
            return cls.from_columns([], [], [])
        known = not any(math.isnan(p.top_reasoning_share + p.distinct_reasoning_share) for p in parts)
        biggest = max(parts, key=lambda p: p.top_reasoning_share * p.n if known else p.n)
        return cls(
            n=n,
            shares={a: sum(p.shares.get(a, 0.0) * p.n for p in parts) / n for a in ACTIONS},
            mean_confidence=sum(p.mean_confidence * p.n for p in parts) / n,
            distinct_reasoning_share=(
                min(1.0, sum(p.distinct_reasoning_share * p.n for p in parts) / n) if known else math.nan
            ),
            top_reasoning_share=biggest.top_reasoning_share * biggest.n / n if known else math.nan,
            invalid_rate=sum(p.invalid_rate * p.n for p in parts) / n,
            top_reasoning=biggest.top_reasoning,
        )

    def degenerate_reasons(
        self, max_action_share: float = 0.95, max_top_reasoning_share: float = 0.9, min_decisions: int = 20
    ) -> list[str]:
        """Why this model is degenerate, in words: one action nearly always (a share above
        `max_action_share`), or one reasoning sentence for nearly everything (above
        `max_top_reasoning_share`). Empty when it is not, and when there are fewer than `min_decisions`
        decisions: too few to tell, so nothing is said."""
        if self.n < min_decisions:
            return []
        reasons = []
        for action in ACTIONS:
            share = self.shares.get(action, 0.0)
            if share > max_action_share:
                reasons.append(
                    f"answered {action} to {round(share * self.n)} of {self.n} decisions ({share:.0%})"
                )
        if self.top_reasoning_share > max_top_reasoning_share:
            sentence = self.top_reasoning if len(self.top_reasoning) <= 60 else self.top_reasoning[:59] + "…"
            said = f"'{sentence}'" if sentence else "an empty one"
            reasons.append(f"one reasoning sentence for {self.top_reasoning_share:.0%} of decisions ({said})")
        return reasons

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat figures with fixed names, for MLflow and metadata: `{prefix}share_buy`, `_sell`, `_hold`,
        `{prefix}mean_confidence`, `{prefix}distinct_reasoning_share`, `{prefix}top_reasoning_share`."""
        return {
            **{f"{prefix}share_{a.lower()}": float(self.shares.get(a, 0.0)) for a in ACTIONS},
            f"{prefix}mean_confidence": float(self.mean_confidence),
            f"{prefix}distinct_reasoning_share": float(self.distinct_reasoning_share),
            f"{prefix}top_reasoning_share": float(self.top_reasoning_share),
        }

    def describe(self) -> str:
        """One line: how many decisions, the action shares, the mean confidence and the reasoning variety."""
        if not self.n:
            return "no decisions"
        shares = " / ".join(f"{a} {self.shares.get(a, 0.0):.0%}" for a in ACTIONS)
        distinct, top = (
            "n/a" if math.isnan(x) else f"{x:.0%}"
            for x in (self.distinct_reasoning_share, self.top_reasoning_share)
        )
        return (
            f"{self.n} decisions ({shares}), mean confidence {self.mean_confidence:.1f}, "
            f"distinct reasoning {distinct}, the most common sentence for {top}, "
            f"invalid {self.invalid_rate:.1%}"
        )
