"""The `crypto-pipeline` command. Each command is a thin call into the library.

Commands import their modules lazily so that `crypto-pipeline --help` stays fast.
"""

from __future__ import annotations

from typing import Any

import typer

from crypto_pipeline.registry import CHALLENGER, MODEL_NAME

app = typer.Typer(help="Train, judge and run a locally hosted LLM that trades crypto.", no_args_is_help=True)


# --- commands are added below, one block each; edit only your own block ---------------------


# --- data: ingest bars into the warehouse, and show what it holds ---------------------------
@app.command("ingest")
def ingest_command(
    symbols: str = typer.Option(
        "", help="Comma-separated symbols, e.g. BTC/USDT,ETH/USDT (default: settings)."
    ),
    start: str = typer.Option("", help="First UTC day (YYYY-MM-DD) or an ISO datetime (default: settings)."),
    end: str = typer.Option("", help="Last UTC day, included (YYYY-MM-DD), or an ISO datetime, excluded."),
    timeframe: str = typer.Option("", help="Base timeframe to ingest, e.g. 5m (default: settings)."),
    source: str = typer.Option("", help="recorded | alpaca (default: settings)."),
    data_dir: str = typer.Option(
        "", "--data-dir", help="recorded: folder of bars_<tf>.parquet or Alpaca CSVs."
    ),
    url: str = typer.Option("", help="alpaca: url_override, e.g. the local exchange http://127.0.0.1:8765."),
    build: bool = typer.Option(True, "--build/--raw-only", help="Also build clean, resampled bars."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Fetch bars into raw_bars, then build clean bars (base + resampled timeframes). Idempotent."""
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from crypto_pipeline.config import Settings
    from crypto_pipeline.errors import SourceError, UserInputError
    from crypto_pipeline.ingest import build_bars, ingest_raw
    from crypto_pipeline.market.sources import make_source
    from crypto_pipeline.warehouse import Warehouse

    console, errors = Console(), Console(stderr=True)
    settings = Settings()  # read now, so that environment changes between calls count
    try:
        bar_source = make_source(
            settings, kind=source or None, data_dir=Path(data_dir) if data_dir else None, url=url or None
        )
        warehouse = Warehouse(settings.warehouse_dir)
        chosen = symbols or ",".join(settings.symbols)
        base = timeframe or settings.base_timeframe
        first, last = start or settings.start, end or settings.end
        report = ingest_raw(bar_source, warehouse, chosen, base, first, last, progress=progress)
        console.print(report.summary(), markup=False)
        if build:
            built = build_bars(warehouse, chosen, base, settings.timeframes, first, last, progress=progress)
            console.print(built.summary(), markup=False)
        else:
            warehouse.refresh_views()
    except UserInputError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except SourceError as error:
        errors.print(f"[red]source failed:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"warehouse: {warehouse.root}  (crypto-pipeline info, or duckdb {warehouse.duckdb_path})")


@app.command("info")
def info_command(
    table: str = typer.Option("", help="Only this table: raw_bars, bars, features, market_states."),
) -> None:
    """What the warehouse holds: symbols, timeframes, ranges, rows, gaps and quarantined rows."""
    from rich.console import Console
    from rich.table import Table

    from crypto_pipeline.config import Settings
    from crypto_pipeline.warehouse import Warehouse

    console = Console()
    if not console.is_terminal:  # piped or under `make run`: rich would squeeze the table into 80 columns
        console = Console(width=160)
    settings = Settings()
    warehouse = Warehouse(settings.warehouse_dir)
    summary = warehouse.info()
    if table:
        summary = summary.filter(summary["table"] == table)
    if summary.is_empty():
        console.print(
            f"nothing stored in {warehouse.root}{f' for {table}' if table else ''}; run: crypto-pipeline ingest"
        )
        return
    view = Table(title=f"warehouse {warehouse.root}")
    for name, justify in [
        ("table", "left"), ("symbol", "left"), ("timeframe", "left"), ("first (UTC)", "left"), ("last (UTC)", "left"),
        ("rows", "right"), ("days", "right"), ("missing", "right"), ("gap", "right"), ("quarantined", "right"),
    ]:  # fmt: skip
        view.add_column(name, justify=justify, no_wrap=name not in ("first (UTC)", "last (UTC)"))  # type: ignore[arg-type]
    for row in summary.iter_rows(named=True):
        view.add_row(
            row["table"],
            row["symbol"],
            row["timeframe"],
            f"{row['first']:%Y-%m-%d %H:%M}",
            f"{row['last']:%Y-%m-%d %H:%M}",
            f"{row['rows']:,}",
            f"{row['days']:,}",
            f"{row['missing']:,}",
            f"{row['gap_ratio']:.2%}",
            f"{row['quarantined']:,}",
            style="red" if row["quarantined"] or row["gap_ratio"] > settings.max_gap_ratio else None,
        )
    console.print(view)


# --- run: the Dagster market_data job end to end (`make run`) --------------------------------
@app.command("run")
def run_command(
    source: str = typer.Option(
        "exchange", help="'exchange' (alpaca-py via the local exchange) or 'recorded' (Parquet files)."
    ),
    train: bool = typer.Option(
        True,
        "--train/--no-train",
        help="Also build the dataset, QLoRA-tune briefly and run the walk-forward.",
    ),
    live_seconds: float = typer.Option(
        120.0, help="Wall seconds of the closing live_paper session on the replay (0: none)."
    ),
    live_decisions: int | None = typer.Option(
        None, help="Also end the live session after this many decision times.", min=1
    ),
) -> None:
    """The offline run: the market_data job (raw_bars → bars → features → market_states) over
    Settings.start..end (both days included) in one run; then the dataset, a short QLoRA fine-tune registered
    as MLflow's `challenger`, the walk-forward baselines, the LLM walk-forward and the promotion gate; last,
    a bounded `live_paper` session on the replay with the champion (or the newest challenger, or the rules
    when no model is registered) and its summary from the journal. One line per stage, the full logs in a
    file; then the warehouse summary and the commands that open the Dagster and MLflow UIs."""
    if source not in ("exchange", "recorded"):
        raise typer.BadParameter("expected 'exchange' or 'recorded'", param_hint="--source")
    # Imported here: the library never imports Dagster; the job lives in the Dagster layer (jobs/).
    from crypto_pipeline.config import get_settings
    from jobs.run_offline import run, ui_commands

    if not run(source, train=train, live_seconds=live_seconds, live_decisions=live_decisions):
        raise typer.Exit(1)
    info_command(table="")
    for line in ui_commands(get_settings()):
        typer.echo(line)


# --- exchange: the local Alpaca-compatible paper exchange -----------------------------------
def _exchange_default(name: str) -> str:
    """The default `--help` shows for an option that falls back to Settings.exchange when left out."""
    from crypto_pipeline.config import ExchangeSettings

    return str(ExchangeSettings.model_fields[name].default)


@app.command("exchange")
def exchange_command(
    # Options left out fall back to Settings.exchange (CRYPTO_PIPELINE_EXCHANGE__<FIELD>), then its defaults.
    host: str | None = typer.Option(
        None,
        help="Interface to listen on (loopback unless told otherwise).",
        show_default=_exchange_default("host"),
    ),
    port: int | None = typer.Option(
        None,
        help="Port for REST and both websockets (0 picks a free one).",
        show_default=_exchange_default("port"),
    ),
    data: str = typer.Option("", "--data", help="Directory of recorded bars (default: the shared 2024 set)."),
    capture: str = typer.Option(
        "", "--capture", help="Binance websocket capture replayed for its day (default: the shared one)."
    ),
    no_capture: bool = typer.Option(
        False, "--no-capture", help="Derive quotes, trades and books from bars only."
    ),
    start: str = typer.Option(
        "", help="Replay clock start, UTC (e.g. 2024-06-01); the data's end serves all history."
    ),
    speed: float | None = typer.Option(
        None,
        help="Market seconds per wall second; 0 replays as fast as clients read.",
        show_default=_exchange_default("speed"),
    ),
    key: str = typer.Option(
        "", envvar="ALPACA_API_KEY", show_envvar=True, help="API key clients must present."
    ),
    secret: str = typer.Option(
        "",
        envvar="ALPACA_SECRET_KEY",
        show_envvar=True,
        show_default=False,
        help="API secret clients must present.",
    ),
    db: str = typer.Option(
        "", "--db", help="SQLite file for account, orders, fills and positions (default: in the warehouse)."
    ),
    reset: bool = typer.Option(False, "--reset", help="Start a fresh account (drops the SQLite state)."),
    maker_fee_bps: float | None = typer.Option(
        None, help="Maker fee in basis points.", show_default=_exchange_default("maker_fee_bps")
    ),
    taker_fee_bps: float | None = typer.Option(
        None, help="Taker fee in basis points.", show_default=_exchange_default("taker_fee_bps")
    ),
    drop_ws_every_messages: int = typer.Option(0, help="Fault: close each websocket after N messages."),
    drop_ws_every_seconds: float = typer.Option(0.0, help="Fault: close each websocket after S seconds."),
    rest_error_rate: float = typer.Option(0.0, help="Fault: share of REST calls answered with an error."),
    rest_error_codes: str = typer.Option("429,500,504", help="Fault: the error statuses, comma-separated."),
    latency_ms: float = typer.Option(0.0, help="Fault: latency added to every REST call."),
) -> None:
    """Serve Alpaca's paper trading and crypto data APIs over replayed recorded market data."""
    from pydantic import ValidationError
    from rich.console import Console

    from crypto_pipeline.exchange import ExchangeConfig, FaultConfig, run_exchange

    console = Console()
    options: dict[str, object] = {"reset": reset}
    given = {
        "host": host,
        "port": port,
        "speed": speed,
        "key": key,
        "secret": secret,
        "maker_fee_bps": maker_fee_bps,
        "taker_fee_bps": taker_fee_bps,
    }
    options.update({name: value for name, value in given.items() if value is not None and value != ""})
    options.update(
        {name: value for name, value in (("data_dir", data), ("start", start), ("db_path", db)) if value}
    )
    if no_capture or capture:
        options["capture_dir"] = None if no_capture else capture
    try:
        codes = [int(code) for code in rest_error_codes.split(",") if code.strip()]
        options["faults"] = FaultConfig(
            drop_ws_every_messages=drop_ws_every_messages,
            drop_ws_every_seconds=drop_ws_every_seconds,
            rest_error_rate=rest_error_rate,
            rest_error_codes=codes,
            latency_ms=latency_ms,
        )
        config = ExchangeConfig(**options)
    except (ValidationError, ValueError) as error:
        console.print(f"[red]invalid exchange option:[/red] {error}")
        raise typer.Exit(2) from None
    if not config.credentials_set:
        console.print(
            "[red]the exchange needs keys:[/red] pass --key/--secret or set ALPACA_API_KEY/ALPACA_SECRET_KEY"
        )
        raise typer.Exit(2)

    def announce(base: str) -> None:
        stream = base.replace("http://", "ws://", 1)
        console.print(f"[bold]local Alpaca-compatible exchange[/bold] replaying {config.data_dir}")
        console.print(
            f"  REST         {base}\n  market data  {stream}/v1beta3/crypto/us\n  trade updates {stream}/stream"
        )
        console.print("  alpaca-py (keys from the environment, never pasted):")
        keys = 'os.environ["ALPACA_API_KEY"], os.environ["ALPACA_SECRET_KEY"]'
        for line in (
            f'TradingClient({keys}, paper=True, url_override="{base}")',
            f'CryptoHistoricalDataClient({keys}, url_override="{base}")',
            f'CryptoDataStream({keys}, url_override="{stream}/v1beta3/crypto/us")',
            f'TradingStream({keys}, paper=True, url_override="{stream}/stream")',
        ):
            console.print("    " + line, markup=False, soft_wrap=True)
        if config.faults.any_active:
            console.print(f"  [yellow]faults on:[/yellow] {config.faults.model_dump()}")

    try:
        run_exchange(config, announce)
    except (OSError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]the exchange could not start:[/red] {error}")
        raise typer.Exit(1) from None


# --- decide: one LLM decision on a recorded market state -------------------------------------
_DTYPE_HELP = (
    "LLM number format: auto (bfloat16 where the hardware computes it natively, else float32) | float32 | "
    "bfloat16; default: CRYPTO_PIPELINE_LLM_DTYPE, else auto (docs/llm.md)."
)


def _settings_with_dtype(dtype: str, console: Any) -> Any:
    """`Settings()` with `--dtype` applied; an unknown format exits 2 naming the choices."""
    from crypto_pipeline.config import Settings, with_llm_dtype

    try:
        return with_llm_dtype(Settings(), dtype.strip() or None)
    except ValueError as error:
        console.print(f"[red]--dtype:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None


@app.command("decide")
def decide_command(
    symbol: str = typer.Option("BTC/USDT", help="Symbol of the recorded data, e.g. BTC/USDT."),
    at: str = typer.Option(
        ..., help="Decision time, UTC (e.g. 2024-06-01T12:00): the state sees bars closed by then."
    ),
    provider: str = typer.Option(
        "local",
        help="local | rule | openai | llama-cpp | swarm (local + rule); also llm:REF, swarm:REF "
        f"(a version number or alias of {MODEL_NAME}, on the base it was trained on), llm (= local), rules.",
    ),
    model: str = typer.Option(
        "",
        help="local: a Hugging Face folder, hub id or .gguf file; llama-cpp: a .gguf file (default: embedded SmolLM2).",
    ),
    adapter: str = typer.Option(
        "",
        help="local: LoRA adapter folder or MLflow URI (models:/name/1, models:/name@champion; "
        f"models:/{MODEL_NAME}/... loads as llm:REF does).",
    ),
    constrained: bool = typer.Option(True, help="local: force the output to the decision grammar."),
    dtype: str = typer.Option("", "--dtype", help=_DTYPE_HELP),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="openai: the server's base URL."),
    openai_model: str = typer.Option("gpt-4o-mini", help="openai: the model name the server expects."),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="openai: the environment variable holding the key."
    ),
    schema_mode: str = typer.Option(
        "auto",
        help="openai: auto | json_schema | ollama | gbnf | json_object | json | text (steps down where refused).",
    ),
) -> None:
    """Print the market state, the prompt and the decision of one provider at one time."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from crypto_pipeline.errors import UserInputError
    from crypto_pipeline.llm.prompts import SYSTEM_PROMPT, build_user_prompt
    from crypto_pipeline.llm.provider import decide_safely
    from crypto_pipeline.registry import ProviderOptions, make_provider, parse_spec
    from crypto_pipeline.state.build import build_market_state_from_recorded

    console = Console()
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        console.print(f"[red]invalid --at {at!r}:[/red] expected an ISO time such as 2024-06-01T12:00")
        raise typer.Exit(2) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    from crypto_pipeline.llm.openai_compat import SCHEMA_MODES

    if schema_mode not in SCHEMA_MODES:
        console.print(
            f"[red]unknown --schema-mode {schema_mode!r}:[/red] expected one of {', '.join(SCHEMA_MODES)}"
        )
        raise typer.Exit(2)
    try:
        parse_spec(provider)
    except UserInputError:
        choices = "local, rule, openai, llama-cpp, swarm, llm:REF or swarm:REF"
        console.print(f"[red]unknown --provider {provider!r}:[/red] expected one of {choices}")
        raise typer.Exit(2) from None
    settings = _settings_with_dtype(dtype, console)
    try:
        state = build_market_state_from_recorded(symbol, when)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]no market state:[/red] {error}")
        raise typer.Exit(1) from None

    options = ProviderOptions(
        model=model or None,
        adapter=adapter or None,
        constrained=constrained,
        batch_size=1,
        openai_base_url=base_url,
        openai_model=openai_model,
        openai_api_key_env=api_key_env,
        schema_mode=schema_mode,
    )
    try:
        chosen = make_provider(provider, settings, options=options).provider
    except UserInputError as error:  # a registered version that is not there
        console.print(f"[red]--provider {provider}:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None

    console.print(
        Panel(
            state.model_dump_json(indent=2, exclude_none=True),
            title=f"state {symbol} @ {when:%Y-%m-%d %H:%M}Z",
        )
    )
    console.print(
        Panel(f"[dim]{SYSTEM_PROMPT}[/dim]\n\n{build_user_prompt(state)}", title="prompt (system, user)")
    )
    with console.status(f"asking {chosen.name}..."):
        [decision] = decide_safely(chosen, [state])
    table = Table(title=f"decision by {decision.provider or chosen.name}", show_header=False)
    shown = decision.model_dump(exclude={"votes", "raw_text"}, exclude_none=True)
    for field, value in shown.items():
        table.add_row(field, str(value.value if hasattr(value, "value") else value))
    for vote in decision.votes:
        table.add_row(
            f"vote {vote.member}",
            f"{vote.action.value} conf {vote.confidence:.0f} weight {vote.weight:.2f}"
            + ("" if vote.valid else f" invalid: {vote.error}"),
        )
    if decision.raw_text:
        table.add_row("model text", decision.raw_text)
    console.print(table)
    if not decision.valid:
        raise typer.Exit(1)


# --- backtest: one policy over one range, one JSON object ------------------------------------------
_DATA_DIR_HELP = (
    "Folder of recorded bars: bars_<tf>.parquet files or Alpaca CSVs (<BASE>-<QUOTE>_HOUR.csv ...), as "
    "`ingest --data-dir` reads; a missing 4h/1d is resampled from a finer timeframe "
    "(default: CRYPTO_PIPELINE_MARKET_DATA_DIR, else ../shared/market-data/binance-spot-2024)."
)
_START_HELP = "First UTC day, included (YYYY-MM-DD), or an ISO datetime."
_END_HELP = "Last UTC day, included (YYYY-MM-DD), or an ISO datetime, excluded."


def _range(start: str, end: str) -> tuple[str, str]:
    """The CLI's range as the half-open instants the library takes (`timeutil.day_range`: days included)."""
    from crypto_pipeline.timeutil import day_range

    first, last = day_range(start, end)
    return first.isoformat(), last.isoformat()


@app.command("backtest")
def backtest_command(
    policy: str = typer.Option(
        "ema_cross",
        help=f"ema_cross | rsi | buy_hold | rules | lgbm | llm ({MODEL_NAME}@champion, else @{CHALLENGER}) | "
        "llm:ALIAS_OR_VERSION | llm:base (the embedded base model).",
    ),
    symbols: str = typer.Option("BTC/USDT", help="Comma-separated symbols of the recorded data."),
    timeframe: str = typer.Option("1h", help="Bar timeframe the orders fill on."),
    start: str = typer.Option("2024-01-01", help=_START_HELP),
    end: str = typer.Option("2024-09-06", help=_END_HELP),
    data_dir: str = typer.Option("", "--data-dir", help=_DATA_DIR_HELP),
    fast: int = typer.Option(9, help="ema_cross: fast EMA span."),
    slow: int = typer.Option(21, help="ema_cross: slow EMA span."),
    fee_bps: float = typer.Option(
        25.0, "--fee-bps", help="Fee per fill, bps of notional (exchange taker: 25)."
    ),
    slippage_bps: float | None = typer.Option(
        None,
        "--slippage-bps",
        help="Flat slippage in bps (default: 0 for signals, the exchange's impact model for rules/llm).",
    ),
    decision_every: float = typer.Option(4.0, "--decision-every", help="rules/llm: hours between decisions."),
    max_decisions: int | None = typer.Option(
        None,
        "--max-decisions",
        help="rules/llm: at most this many decisions (symbols x times); the span ends before the one "
        "that would exceed it, and the summary says where. Decisions are cached as they are made.",
    ),
    train_days: float = typer.Option(
        120.0, "--train-days", help="lgbm: days of training before --start (less 48 h purge and embargo)."
    ),
    out: str = typer.Option(
        "", help="Folder for the report, one file per run (default: <warehouse>/reports/backtest)."
    ),
    dtype: str = typer.Option("", "--dtype", help=f"llm: {_DTYPE_HELP}"),
) -> None:
    """Backtest one policy on --start..--end (both days included); print one JSON object: what ran, the
    metrics with Sharpe's interval, and for rules/llm the decisions' action shares, mean confidence and
    invalid rate. Every policy is measured on that span; lgbm trains on the --train-days before it."""
    import json
    from pathlib import Path

    from rich.console import Console

    from crypto_pipeline.backtest.inputs import check_inputs
    from crypto_pipeline.errors import UserInputError

    errors = Console(stderr=True)
    settings = _settings_with_dtype(dtype, errors)
    chosen = tuple(s.strip() for s in symbols.split(",") if s.strip())
    folder = Path(data_dir) if data_dir else settings.market_data_dir
    try:
        first, last = _range(start, end)
        # Bad input fails here, before vectorbt, numba or a model is imported.
        check_inputs(
            policy=policy, symbols=chosen, timeframe=timeframe, start=first, end=last, data_dir=folder,
            fast=fast, slow=slow,
        )  # fmt: skip
        from crypto_pipeline.backtest.run import backtest, config_from_options

        config = config_from_options(
            symbols=chosen,
            timeframe=timeframe,
            start=first,
            end=last,
            fast=fast,
            slow=slow,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            decision_every_hours=decision_every,
            data_dir=folder,
        )
        from crypto_pipeline.warehouse import Warehouse

        out_dir = Path(out) if out else settings.warehouse_dir / "reports" / "backtest"
        summary, _ = backtest(
            policy,
            config,
            out_dir=out_dir,
            warehouse=Warehouse(settings.warehouse_dir),
            max_decisions=max_decisions,
            train_days=train_days,
            settings=settings,
        )
    except (UserInputError, ValueError) as error:
        errors.print(f"[red]backtest:[/red] {error}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary, default=float))


@app.command("promote")
def promote_command(
    challenger: str = typer.Option(CHALLENGER, help=f"Registered version number or alias of {MODEL_NAME}."),
    symbols: str = typer.Option("", help="Comma-separated symbols to judge on (default: the settings')."),
    start: str = typer.Option(
        "", help=f"{_START_HELP} Default: CRYPTO_PIPELINE_START (the settings' start)."
    ),
    end: str = typer.Option("", help=f"{_END_HELP} Default: CRYPTO_PIPELINE_END (the settings' end)."),
    data_dir: str = typer.Option("", "--data-dir", help=_DATA_DIR_HELP),
    folds: int = typer.Option(
        3, min=1, help="Walk-forward folds ending at --end (those after the training cutoff are used)."
    ),
    test_days: float = typer.Option(7.0, min=0.5, help="Length of each fold's test window."),
    decision_every: float = typer.Option(12.0, min=1.0, help="Hours between the LLM's decisions."),
    audit_samples: int = typer.Option(2, min=1, help="Decisions re-made per fold by the leakage audits."),
    dtype: str = typer.Option("", "--dtype", help=_DTYPE_HELP),
) -> None:
    """Run the promotion gate on a registered version over --start..--end; print one JSON object with the
    verdict and reasons. A window with no fold after the training cutoff is a refusal with its reason."""
    import json
    from pathlib import Path

    from rich.console import Console

    from crypto_pipeline.errors import UserInputError

    settings = _settings_with_dtype(dtype, Console(stderr=True))
    chosen = tuple(s.strip() for s in symbols.split(",") if s.strip()) or tuple(settings.symbols)
    folder = Path(data_dir) if data_dir else settings.market_data_dir
    try:
        first, last = _range(start or settings.start, end or settings.end)
        from crypto_pipeline.backtest.inputs import check_inputs

        # Bad input fails here, before vectorbt, MLflow or a model is imported, and records nothing.
        check_inputs(symbols=chosen, timeframe="1h", start=first, end=last, data_dir=folder)
        from crypto_pipeline.backtest.gate import promote
        from crypto_pipeline.backtest.walkforward import WalkForwardConfig

        config = WalkForwardConfig(
            symbols=chosen,
            start=first,
            end=last,
            n_folds=folds,
            test_days=test_days,
            decision_every_hours=decision_every,
            data_dir=folder,
        )
        result = promote(challenger, settings=settings, config=config, audit_samples=audit_samples)
    except UserInputError as error:
        Console(stderr=True).print(f"[red]promote:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, default=str))


# --- training: fine-tune on sft_dataset, and list the registered model versions --------------
@app.command("finetune")
def finetune_command(
    base_model: str = typer.Option("", help="Folder or cached hub id (default: the embedded SmolLM2)."),
    load_in_4bit: bool = typer.Option(True, "--4bit/--float", help="QLoRA 4-bit NF4, or float LoRA."),
    lora_r: int = typer.Option(16, help="LoRA rank."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.05, help="LoRA dropout."),
    target_modules: str = typer.Option(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", help="Comma-separated LoRA targets."
    ),
    lora_layers: int = typer.Option(
        0, help="LoRA on the last N layers only (0: every layer; faster on CPU)."
    ),
    learning_rate: float = typer.Option(1e-3, help="Peak learning rate."),
    max_steps: int = typer.Option(60, help="Optimizer steps (0: use --epochs)."),
    epochs: float = typer.Option(1.0, help="Epochs when --max-steps is 0."),
    batch_size: int = typer.Option(4, help="Examples per step (per device)."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    max_length: int = typer.Option(640, help="Longest tokenized example."),
    seed: int = typer.Option(0, help="Seed for sampling, init and data order."),
    training_cutoff: str = typer.Option("", help="ISO time: train labels end by it (default: all)."),
    max_train_examples: int = typer.Option(240, help="Class-balanced train subsample (0: all)."),
    cache_lower_layers: bool = typer.Option(
        False,
        "--cache-lower-layers/--sft-trainer",
        help="With --float and --lora-layers: train the top layers on the frozen layers' cached output "
        "(several times cheaper per epoch on CPU); default: trl's SFTTrainer.",
    ),
    action_loss_weight: float = typer.Option(1.0, help="Loss weight of the action's token (cached path)."),
    curve_points: int = typer.Option(5, help="Learning-curve points (cached path)."),
    eval_size: int = typer.Option(300, help="Class-balanced validation and test samples scored (0: all)."),
    generate_size: int = typer.Option(24, help="Validation examples the tuned model answers in full."),
    register: bool = typer.Option(True, "--register/--no-register", help="Log to MLflow and register."),
) -> None:
    """Fine-tune on the stored sft_dataset, evaluate against the references, register crypto-policy@challenger."""
    from datetime import datetime

    from rich.console import Console

    from crypto_pipeline.config import Settings
    from crypto_pipeline.llm.base_model import BaseModelUnavailableError
    from crypto_pipeline.training.dataset import HF_DATASET_DIR, DatasetError, read_sft_dataset, stored_card
    from crypto_pipeline.training.finetune import FinetuneConfig
    from crypto_pipeline.training.pipeline import train_evaluate_register
    from crypto_pipeline.warehouse import Warehouse

    console = Console()
    settings = Settings()
    wh = Warehouse(settings.warehouse_dir)
    config = FinetuneConfig(
        base_model=base_model or None,
        load_in_4bit=load_in_4bit,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=[t.strip() for t in target_modules.split(",") if t.strip()],
        lora_layers=lora_layers or None,
        learning_rate=learning_rate,
        max_steps=max_steps or None,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        training_cutoff=datetime.fromisoformat(training_cutoff) if training_cutoff else None,
        max_train_examples=max_train_examples or None,
        cache_lower_layers=cache_lower_layers,
        action_loss_weight=action_loss_weight,
        curve_points=curve_points,
    )
    frame = read_sft_dataset(wh)
    try:
        if frame.is_empty():
            raise DatasetError(f"no sft_dataset in {wh.root}: materialize it first (the retrain job)")
        outcome = train_evaluate_register(
            frame,
            wh.read("market_states", symbols=sorted(frame["symbol"].unique().to_list())),
            config,
            output_dir=settings.models_dir / "finetune",
            models_dir=settings.models_dir,
            tracking_uri=settings.mlflow_tracking_uri if register else None,
            dataset_card=stored_card(frame, settings.warehouse_dir / HF_DATASET_DIR),
            eval_size=eval_size or None,
            generate_size=generate_size,
            progress=True,
            log_line=console.print,
        )
    except (DatasetError, BaseModelUnavailableError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    for name, value in sorted(outcome.metrics.items()):
        console.print(f"{name:32} {value:.3f}")


@app.command("models")
def models_command() -> None:
    """The registered versions of crypto-policy side by side: aliases, training cutoff, base, and each
    metric with its interval (val/test balanced accuracy, macro F1, tuned minus base), the references
    (logreg: the ceiling) and how the tuned model answered on validation. Blank: not logged by that run."""
    from rich.console import Console
    from rich.table import Table

    from crypto_pipeline.config import Settings
    from crypto_pipeline.model_versions import COLUMNS, version_rows

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    settings = Settings()
    rows = version_rows(settings.mlflow_tracking_uri)
    if not rows:
        console.print(
            f"no versions of {MODEL_NAME} in {settings.mlflow_tracking_uri}; run: crypto-pipeline finetune"
        )
        return
    # One column per version, side by side; one row per figure.
    table = Table(title=f"{MODEL_NAME} ({settings.mlflow_tracking_uri})")
    table.add_column("version")
    for row in rows:
        table.add_column(row["version"], justify="right")
    for name in COLUMNS[1:]:
        table.add_row(name, *(row[name] for row in rows))
    console.print(table)


# --- live: the kill switch ------------------------------------------------------------------
@app.command("kill")
def kill_command(
    reason: str = typer.Option("requested by a person", help="Why: written in the flag and the journal."),
    clear: bool = typer.Option(False, "--clear", help="Switch the kill switch off again (a person decides)."),
) -> None:
    """Set the kill switch: every live session cancels its orders, closes its positions and stops."""
    from crypto_pipeline.config import Settings
    from crypto_pipeline.live.kill import clear_kill, kill_flag_path, request_kill

    flag = kill_flag_path(Settings().warehouse_dir)
    if clear:
        typer.echo(f"kill switch {'cleared' if clear_kill(flag) else 'was not set'} ({flag})")
        return
    request_kill(flag, reason)
    typer.echo(f"kill switch set ({flag}): live sessions flatten and stop; clear it with --clear")


# --- replay-decisions: a model again on a run's journaled prompts ----------------------------------
@app.command("replay-decisions")
def replay_decisions_command(
    run: str = typer.Option(
        ..., "--run", help="The journal's run id (a live session id, or a backtest run)."
    ),
    model: str = typer.Option(
        "",
        "--model",
        help=f"LoRA adapter folder or MLflow URI (models:/{MODEL_NAME}/3, models:/{MODEL_NAME}@champion); "
        "default: the registered version the run used.",
    ),
    provider: str = typer.Option("local", help="local (LocalLLM with --model) | rules."),
    limit: int = typer.Option(0, min=0, help="Replay only the first N decisions (0: all)."),
    show: int = typer.Option(20, min=0, help="Rows of differences to print."),
    out: str = typer.Option("", help="Write every replayed row to this CSV file."),
    dtype: str = typer.Option("", "--dtype", help=f"local: {_DTYPE_HELP}"),
) -> None:
    """Re-run a model on a run's journaled prompts; show where it now decides differently."""
    import json

    from rich.console import Console
    from rich.table import Table

    from crypto_pipeline.errors import UserInputError
    from crypto_pipeline.journal.replay import journaled_decisions, journaled_model, replay_decisions
    from crypto_pipeline.registry import ProviderOptions, make_provider
    from crypto_pipeline.warehouse import Warehouse

    console = Console(stderr=True)
    settings = _settings_with_dtype(dtype, console)
    try:
        rows = journaled_decisions(Warehouse(settings.warehouse_dir), run, limit or None)
        if provider not in ("local", "rules"):
            raise UserInputError(f"unknown --provider {provider!r}: expected local or rules")
        uri = (model or journaled_model(rows)) if provider == "local" else None
        if provider == "local" and uri is None:
            raise UserInputError(
                f"run {run!r} did not decide with one registered version: name one with --model"
            )
        # A registered version's URI loads as llm:REF does (on its own base); a folder on the embedded base.
        chosen = make_provider(provider, settings, options=ProviderOptions(adapter=uri)).provider
    except UserInputError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    with console.status(f"replaying {rows.height} decisions of {run} with {chosen.name}..."):
        report = replay_decisions(rows, chosen, run)
    changed = report.rows.filter("changed")
    table = Table(title=f"{report.changed} of {report.replayed} decisions differ ({chosen.name} vs {run})")
    columns = ("time", "symbol", "before", "after", "valid_after", "prompt_changed")
    for column in columns:
        table.add_column(column)
    for row in changed.select(columns).head(show).iter_rows():
        table.add_row(*map(str, row))
    console.print(table)
    if out:
        report.rows.write_csv(out)
    typer.echo(json.dumps(report.summary()))


# --- mcp: the venue's risk-gated tools for any MCP client ----------------------------------------
@app.command("mcp")
def mcp_command(
    transport: str = typer.Option("stdio", help="stdio (a client starts this command) or http (streamable)."),
    host: str = typer.Option(
        "127.0.0.1", help="http: interface to listen on (no authentication: keep loopback)."
    ),
    port: int = typer.Option(8766, help="http: port."),
    path: str = typer.Option("/mcp", help="http: the endpoint's path."),
    venue: str = typer.Option(
        "local", help="local (the exchange), alpaca_paper, or alpaca_live (refused unless enabled)."
    ),
    exchange_url: str = typer.Option(
        "", help="local: a running exchange (default: Settings' host and port)."
    ),
    run_id: str = typer.Option(
        "mcp", help="The journal's run_id and the client_order_id prefix of its orders."
    ),
    timeframe: str = typer.Option("5m", help="Base bars the market states are built from."),
    lookback_days: int = typer.Option(30, help="History the market states are built from."),
) -> None:
    """Serve get_account, get_positions, get_orders, get_bars, get_market_state, place_order (through the
    risk engine, journaled), cancel_order and kill_switch over MCP; the latest walk-forward report is a
    resource. Keys come from ALPACA_API_KEY / ALPACA_SECRET_KEY."""
    import logging

    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape

    from crypto_pipeline.config import Settings
    from crypto_pipeline.errors import UserInputError
    from crypto_pipeline.mcp_desk import AgentConfig, AgentDesk
    from crypto_pipeline.mcp_server import serve

    errors = Console(stderr=True)  # stdout is the protocol's on stdio: nothing else may be printed there
    if transport not in ("stdio", "http"):
        errors.print(
            f"[red]mcp:[/red] unknown transport {transport!r}; expected stdio or http", highlight=False
        )
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    try:
        config = AgentConfig(
            run_id=run_id,
            venue=venue,
            exchange_url=exchange_url or None,
            timeframe=timeframe,
            lookback_days=lookback_days,
        )
        desk = AgentDesk(config, settings)
    except (UserInputError, ValidationError, ValueError) as error:
        errors.print(f"[red]mcp:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    serve(desk, settings.warehouse_dir / "reports", transport, host=host, port=port, path=path)  # type: ignore[arg-type]


if __name__ == "__main__":
    app()
