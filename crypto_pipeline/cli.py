"""The `crypto-pipeline` command. Each command is a thin call into the library.

Commands import their modules lazily so that `crypto-pipeline --help` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Train, judge and run a locally hosted LLM that trades crypto.", no_args_is_help=True)


# --- commands are added below, one block each; edit only your own block ---------------------


if __name__ == "__main__":
    app()
