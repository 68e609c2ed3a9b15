"""`crypto-pipeline replay-decisions`: a model again on the states a real session journaled."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.journal.replay import journaled_decisions, journaled_model, replay_decisions
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.warehouse import Warehouse

from .conftest import AlwaysBuy, Running, clients_for, live_config


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory, small_data) -> Warehouse:  # noqa: ANN001
    """A rule-based session's journal: two decision hours over two symbols on the stepped exchange."""
    from crypto_pipeline.exchange import ExchangeServer
    from tests.live.conftest import exchange_config

    root = tmp_path_factory.mktemp("replay")
    server = ExchangeServer(exchange_config(root / "exchange.sqlite", small_data)).start()
    try:
        warehouse = Warehouse(root / "wh")
        session = LiveSession(
            live_config(session_id="rules-run"), clients_for(server), RuleBased(), warehouse
        )
        with Running(session, server) as running:
            running.step(2)
    finally:
        server.stop()
    return warehouse


def test_the_same_rules_decide_the_same_and_another_provider_shows_its_differences(journaled) -> None:  # noqa: ANN001
    rows = journaled_decisions(journaled, "rules-run")
    assert rows.height >= 4 and journaled_model(rows) is None  # the rules are no registered version

    same = replay_decisions(rows, RuleBased(), "rules-run")
    assert same.replayed == rows.height and same.changed == 0
    assert not same.rows["prompt_changed"].any()  # the template renders the journaled prompts exactly

    other = replay_decisions(rows, AlwaysBuy(), "rules-run")
    expected = rows.filter(rows["action"] != "BUY").height
    assert other.changed == expected and set(other.rows["after"]) == {"BUY"}
    assert other.summary()["changed"] == expected


def test_the_command_prints_a_summary_and_refuses_what_it_cannot_replay(
    journaled, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(journaled.root))
    runner = CliRunner()
    out = tmp_path / "replayed.csv"
    done = runner.invoke(
        app, ["replay-decisions", "--run", "rules-run", "--provider", "rules", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["changed"] == 0 and summary["replayed"] >= 4 and out.is_file()

    unknown = runner.invoke(app, ["replay-decisions", "--run", "nope", "--provider", "rules"])
    assert unknown.exit_code == 2 and "rules-run" in unknown.output  # it names the runs it has
    no_model = runner.invoke(app, ["replay-decisions", "--run", "rules-run"])
    assert no_model.exit_code == 2 and "--model" in no_model.output
    with pytest.raises(UserInputError):
        journaled_decisions(Warehouse(tmp_path / "empty"), "rules-run")
