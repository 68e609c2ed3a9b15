"""`run_live`: one bounded session from a `LiveConfig` and the settings, with everything it needs set
up: the venue (and, for the local venue, an embedded exchange when asked), the keys from the
environment, the provider (champion, or the newest challenger, saying so) and the kill switch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from crypto_pipeline.config import with_llm_dtype
from crypto_pipeline.journal.summary import summarize_journal
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.live.alerts import Alerter
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.kill import kill_flag_path
from crypto_pipeline.live.metrics import LiveMetrics
from crypto_pipeline.live.orders import OrderDesk
from crypto_pipeline.live.session import LiveSession, SessionReport
from crypto_pipeline.live.shadow import Shadow
from crypto_pipeline.live.venue import Clients, Credentials, resolve_endpoints
from crypto_pipeline.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    ProviderChoice,
    ProviderOptions,
    alias_version,
    make_provider,
)
from crypto_pipeline.registry import client as registry_client
from crypto_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)
CHAMPION_POLL_S = 15.0


@dataclass(frozen=True)
class EmbeddedExchange:
    """Start the local exchange inside the session (offline runs, `make run`, tests)."""

    start: str | None = "2024-08-01"
    speed: float = 3600.0
    data_dir: Path | None = None
    db_path: Path | None = None
    reset: bool = False  # a fresh paper account (`make run`), instead of the one in `db_path`


def run_live(
    config: LiveConfig,
    settings: object,
    *,
    exchange_url: str | None = None,
    embedded: EmbeddedExchange | None = None,
) -> SessionReport:
    warehouse_dir = Path(settings.warehouse_dir)  # type: ignore[attr-defined]
    endpoints = resolve_endpoints(config.venue, settings, exchange_url)  # real money refused here
    server = None
    if config.venue == "local" and embedded is not None:
        # Imported here: the exchange (FastAPI, uvicorn) loads only when a session embeds one.
        from crypto_pipeline.exchange import local_exchange

        server = local_exchange(
            data_dir=embedded.data_dir or settings.market_data_dir,  # type: ignore[attr-defined]
            db_path=embedded.db_path or warehouse_dir / "exchange.sqlite",
            start=embedded.start,
            speed=embedded.speed,
            reset=embedded.reset,
            keys=_environment_keys(settings),
        ).start()
        credentials = Credentials(server.config.key, server.config.secret)
        endpoints = resolve_endpoints("local", settings, server.base_url)
    else:
        credentials = Credentials.from_settings(settings, config.venue)
    metrics = LiveMetrics(config.session_id)
    alerts = Alerter.from_settings(config.session_id, settings)
    monitoring = getattr(settings, "monitoring", None)
    try:
        if monitoring is not None and monitoring.metrics_port is not None:
            metrics.serve(monitoring.metrics_port, monitoring.metrics_host)
        choice, shadow_choices = session_providers(config, settings)
        log.info("live session %s decides with %s", config.session_id, choice.note)
        clients = Clients.connect(endpoints, credentials)
        warehouse = Warehouse(warehouse_dir)
        cash = float(clients.trading.get_account()["equity"]) if shadow_choices else 0.0
        shadows = [
            Shadow(s.provider, str(s.version), s.note, config.session_id, warehouse, init_cash=cash)
            for s in shadow_choices
        ]
        for shadow in shadows:
            log.info(
                "live session %s: %s decides in shadow (%s)",
                config.session_id,
                shadow.run_id,
                shadow.report.note,
            )
        session = LiveSession(
            config,
            clients,
            choice.provider,
            warehouse,
            kill_flag=kill_flag_path(warehouse_dir),
            provider_note=choice.note,
            metrics=metrics,
            alerts=alerts,
            model_version=choice.version,
            shadows=shadows,
        )
        if config.provider == "auto":
            # A new champion (or a first one, while the rules trade) ends the session: champion_sensor
            # starts the next one with it.
            session.stop_when = _champion_moved(settings, CHAMPION, choice.version)
        elif config.provider in ("local", "swarm") and choice.version is not None:
            session.stop_when = _champion_moved(settings, config.model_alias, choice.version)
        report = session.run()
        record_paper_results(settings, report, Warehouse(warehouse_dir))
        return report
    finally:
        alerts.close()
        metrics.close()
        if server is not None:
            server.stop()


def session_providers(
    config: LiveConfig, settings: object, *, load: bool = True
) -> tuple[ProviderChoice, list[ProviderChoice]]:
    """What trades and what decides in shadow. Provider 'auto': crypto-policy@champion trades; without a
    champion the rules trade, saying so, and the newest challenger runs in shadow. `config.shadows`
    names other versions to shadow (a version that is the trading one is left out). Local models decide in
    `config.dtype` where it is set, else in the settings' `llm_dtype`."""
    settings = with_llm_dtype(settings, config.dtype)  # type: ignore[arg-type]
    if config.provider == "auto":
        # Asked only here: an explicit provider does not wait on the registry.
        uri = settings.mlflow_tracking_uri  # type: ignore[attr-defined]
        champion, challenger = alias_version(uri, CHAMPION), alias_version(uri, CHALLENGER)
        if champion is not None:
            trading = make_provider(f"llm:{champion}", settings, load=load)  # type: ignore[arg-type]
            trading = replace(trading, note=f"{MODEL_NAME}@{CHAMPION}: {trading.note}")
        else:
            why = f"no {MODEL_NAME}@{CHAMPION} registered: the rules trade"
            if challenger is not None and config.shadows is None:
                why += f", the newest {CHALLENGER} (version {challenger}) decides in shadow"
            log.warning("%s (registry %s)", why, uri)
            trading = replace(make_provider("rules", settings), note=why)  # type: ignore[arg-type]
        default = [challenger] if challenger is not None and challenger != champion else []
    else:
        trading = session_provider(config, settings, load=load)
        default = []
    refs = list(config.shadows) if config.shadows is not None else default
    shadows: list[ProviderChoice] = []
    for ref in refs:
        shadow = make_provider(f"llm:{ref}", settings, load=load)  # type: ignore[arg-type]
        if shadow.version is not None and shadow.version not in {
            trading.version,
            *(s.version for s in shadows),
        }:
            shadows.append(shadow)
    return trading, shadows


def session_provider(config: LiveConfig, settings: object, *, load: bool = True) -> ProviderChoice:
    """The session's provider from the one factory: 'local' and 'swarm' decide with crypto-policy at
    `model_alias`, or with the newest challenger when that alias names no version yet (said in the
    note); the model is loaded now (`load`), so loading does not eat the session's runtime."""
    settings = with_llm_dtype(settings, config.dtype)  # type: ignore[arg-type]
    options = ProviderOptions(
        openai_base_url=config.openai_base_url,
        openai_model=config.openai_model,
        openai_api_key_env=config.openai_api_key_env,
    )
    return make_provider(
        config.provider, settings, ref=config.model_alias, fallback=True, options=options, load=load
    )


def record_paper_results(settings: object, report: SessionReport, warehouse: Warehouse) -> None:
    """Each registered version's forward record of this session on its model version in MLflow (tags
    `paper.<session>.*`): the trading version's and every shadow's side by side, as MLflow's model
    comparison shows them. The journal holds the rows; these are the figures."""
    runs = [(report.session_id, report.model_version, "trading")]
    runs += [(s.run_id, s.version, "shadow") for s in report.shadows]
    runs = [(run_id, version, role) for run_id, version, role in runs if version]
    if not runs:
        return
    mlflow_client = registry_client(settings.mlflow_tracking_uri)  # type: ignore[attr-defined]
    for run_id, version, role in runs:
        summary = summarize_journal(warehouse, run_id)
        figures = {
            "role": role,
            "run_id": run_id,
            "decisions": summary.decisions,
            "valid_rate": summary.valid_rate,
            "actions": ",".join(f"{k}:{v}" for k, v in sorted(summary.actions.items())),
            "approved": summary.approved,
            "return": summary.session_return,
            "buy_and_hold_return": summary.buy_and_hold_return,
        }
        try:
            for name, value in figures.items():
                if value is not None:
                    mlflow_client.set_model_version_tag(
                        MODEL_NAME, version, f"paper.{report.session_id}.{name}", str(value)
                    )
        except Exception as exc:  # noqa: BLE001 - the journal has it all; the tags are a convenience
            log.warning(
                "could not tag %s version %s with the session's figures: %s", MODEL_NAME, version, exc
            )


def _environment_keys(settings: object) -> tuple[SecretStr, SecretStr] | None:
    """The environment's keys when both are set; None lets `local_exchange` make keys for this run alone."""
    key = getattr(settings, "alpaca_api_key", None)
    secret = getattr(settings, "alpaca_secret_key", None)
    if key and secret and key.get_secret_value() and secret.get_secret_value():
        return key, secret
    return None


def _champion_moved(settings: object, alias: str, version: str):  # noqa: ANN202 - a small closure
    """A check, polled by the session, that ends it cleanly once `alias` names another version."""
    last = [0.0]

    def check() -> str | None:
        now = time.monotonic()
        if now - last[0] < CHAMPION_POLL_S:
            return None
        last[0] = now
        current = alias_version(settings.mlflow_tracking_uri, alias)  # type: ignore[attr-defined]
        if current is not None and current != version:
            return f"{alias} moved from version {version} to {current}"
        return None

    return check


def flatten_venue(settings: object, venue: str = "local", exchange_url: str | None = None) -> int:
    """The kill switch without a session: cancel every open order and close every position at the
    venue (keys from the environment), journaled under run id `kill-switch`; returns positions closed."""
    clients = Clients.connect(
        resolve_endpoints(venue, settings, exchange_url), Credentials.from_settings(settings, venue)
    )
    journal = Journal(Warehouse(Path(settings.warehouse_dir)), "kill-switch")  # type: ignore[attr-defined]
    desk = OrderDesk(clients.trading, journal, "kill-switch")
    desk.call("account", clients.check_keys)
    closed = desk.flatten(datetime.now(UTC))
    journal.flush()
    alerts = Alerter.from_settings("kill-switch", settings)
    alerts.kill_switch(
        f"no session running, venue {venue}", closed, session=False
    )  # logged, and posted when set
    alerts.close()
    return closed
