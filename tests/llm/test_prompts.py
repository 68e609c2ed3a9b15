"""Prompts: versioned, shared system prompt; user prompt from the state; nothing after `state.at`."""

from __future__ import annotations

from datetime import timedelta

from crypto_pipeline.llm.decision import Action
from crypto_pipeline.llm.prompts import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    RecentTrade,
    anonymized,
    build_messages,
    build_user_prompt,
    prompt_hash,
    render_state,
)
from crypto_pipeline.state import MarketState, Portfolio


def test_system_prompt_states_the_schema_and_the_spot_rule() -> None:
    for word in (
        '"action"',
        '"confidence"',
        '"position_size_pct"',
        '"stop_loss_pct"',
        '"take_profit_pct"',
        '"reasoning"',
        "no shorts",
    ):
        assert word in SYSTEM_PROMPT
    for action in Action:
        assert f'"{action.value}"' in SYSTEM_PROMPT
    assert PROMPT_VERSION.startswith("decision-v")


def test_user_prompt_is_the_state_encoding() -> None:
    state = MarketState.example()
    assert build_user_prompt(state) == render_state(state)
    assert build_user_prompt(state, anonymize=True) == render_state(state, anonymize=True)
    assert not hasattr(state, "to_prompt")  # the value type renders nothing: all text lives in prompts


def test_an_anonymized_state_renders_anonymized_through_every_entry_point() -> None:
    state = MarketState.example()
    hidden = anonymized(state)
    assert isinstance(hidden, MarketState) and hidden.model_dump() == state.model_dump()
    assert build_user_prompt(hidden) == render_state(state, anonymize=True) == render_state(hidden)
    assert "BTC" not in build_user_prompt(hidden) and "2024" not in build_user_prompt(hidden)
    # Derived states (the live loop and the backtest add the portfolio) stay anonymized.
    flat = Portfolio(cash=10000.0, equity=10000.0)
    assert build_user_prompt(hidden, portfolio=flat) == build_user_prompt(
        state, portfolio=flat, anonymize=True
    )


def test_recent_trades_after_the_decision_time_are_never_shown() -> None:
    state = MarketState.example()
    past = RecentTrade(at=state.at - timedelta(hours=5), side="BUY", price=66000.0)
    closed = RecentTrade(at=state.at - timedelta(hours=1), side="SELL", price=67400.0, realized_pnl_pct=2.1)
    future = RecentTrade(at=state.at + timedelta(minutes=1), side="SELL", price=99999.0)
    text = build_user_prompt(state, recent_trades=[future, closed, past])
    assert "recent trades:" in text
    assert "66000" in text and "pnl +2.10%" in text
    assert "99999" not in text
    # Oldest first, so the model reads them in the order they happened.
    assert text.index("BUY @ 66000") < text.index("SELL @ 67400")


def test_portfolio_argument_replaces_the_states_portfolio() -> None:
    state = MarketState.example().model_copy(update={"portfolio": None})
    flat = build_user_prompt(state)
    with_book = build_user_prompt(
        state, portfolio=Portfolio(position_qty=0.1, avg_entry_price=60000.0, cash=1000.0, equity=8000.0)
    )
    assert with_book != flat
    assert with_book == render_state(
        state.with_portfolio(Portfolio(position_qty=0.1, avg_entry_price=60000.0, cash=1000.0, equity=8000.0))
    )


def test_anonymized_trades_show_no_price_or_date() -> None:
    state = MarketState.example()
    trade = RecentTrade(at=state.at - timedelta(hours=2), side="BUY", price=66123.0, realized_pnl_pct=None)
    text = build_user_prompt(state, recent_trades=[trade], anonymize=True)
    assert "66123" not in text and "BTC" not in text
    assert "recent trades: BUY" in text


def test_prompt_hash_changes_with_either_prompt_and_is_stable() -> None:
    user = render_state(MarketState.example())
    assert prompt_hash(user) == prompt_hash(user)
    assert prompt_hash(user) != prompt_hash(user + " ")
    assert prompt_hash(user) != prompt_hash(user, system_prompt=SYSTEM_PROMPT + " ")
    assert [m["role"] for m in build_messages(user)] == ["system", "user"]


# The recorded fingerprints of a fixed state's prompts (plain, anonymized) per prompt version. Changing the
# rendering (wording, order, digits) or the system prompt without bumping PROMPT_VERSION fails here; a bump
# records the new version's hashes, so stored states and training prompts keep naming the text they hold.
GOLDEN_HASHES: dict[str, tuple[str, str]] = {"decision-v1": ("1a94321b51fc3a16", "187e1b918b250fff")}


def test_a_fixed_state_renders_to_the_recorded_hash_of_its_prompt_version() -> None:
    from crypto_pipeline.state import OrderBookSnapshot

    state = MarketState.example().with_order_book(
        OrderBookSnapshot(bid=67510.0, ask=67514.6, bid_depth=3.2, ask_depth=2.1)
    )
    trades = [
        RecentTrade(at=state.at - timedelta(hours=5), side="BUY", price=66000.0),
        RecentTrade(at=state.at - timedelta(hours=30), side="SELL", price=64000.0, realized_pnl_pct=-1.5),
    ]
    assert PROMPT_VERSION in GOLDEN_HASHES, f"record the golden hashes of {PROMPT_VERSION}"
    plain = prompt_hash(build_user_prompt(state, recent_trades=trades))
    anonymized = prompt_hash(build_user_prompt(state, recent_trades=trades, anonymize=True))
    assert (plain, anonymized) == GOLDEN_HASHES[PROMPT_VERSION]
