"""The `crypto-pipeline` command. Each command is a thin call into the library.

Commands import their modules lazily so that `crypto-pipeline --help` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Train, judge and run a locally hosted LLM that trades crypto.", no_args_is_help=True)


# --- commands are added below, one block each; edit only your own block ---------------------


# --- exchange: the local Alpaca-compatible paper exchange -----------------------------------
@app.command("exchange")
def exchange_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback unless told otherwise)."),
    port: int = typer.Option(8765, help="Port for REST and both websockets (0 picks a free one)."),
    data: str = typer.Option("", "--data", help="Directory of recorded bars (default: the shared 2024 set)."),
    start: str = typer.Option("", help="Replay clock start, UTC (e.g. 2024-06-01); the data's end serves all history."),
    speed: float = typer.Option(1.0, help="Market seconds per wall second; 0 replays as fast as clients read."),
    key: str = typer.Option("", envvar="ALPACA_API_KEY", show_envvar=True, help="API key clients must present."),
    secret: str = typer.Option(
        "", envvar="ALPACA_SECRET_KEY", show_envvar=True, show_default=False, help="API secret clients must present."
    ),
    db: str = typer.Option("", "--db", help="SQLite file for account, orders, fills and positions."),
    reset: bool = typer.Option(False, "--reset", help="Start a fresh account (drops the SQLite state)."),
    maker_fee_bps: float = typer.Option(15.0, help="Maker fee in basis points."),
    taker_fee_bps: float = typer.Option(25.0, help="Taker fee in basis points."),
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
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "speed": speed,
        "key": key,
        "secret": secret,
        "reset": reset,
        "maker_fee_bps": maker_fee_bps,
        "taker_fee_bps": taker_fee_bps,
    }
    options.update({name: value for name, value in (("data_dir", data), ("start", start), ("db_path", db)) if value})
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
        console.print("[red]the exchange needs keys:[/red] pass --key/--secret or set ALPACA_API_KEY/ALPACA_SECRET_KEY")
        raise typer.Exit(2)
    def announce(base: str) -> None:
        stream = base.replace("http://", "ws://", 1)
        console.print(f"[bold]local Alpaca-compatible exchange[/bold] replaying {config.data_dir}")
        console.print(f"  REST         {base}\n  market data  {stream}/v1beta3/crypto/us\n  trade updates {stream}/stream")
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


if __name__ == "__main__":
    app()
