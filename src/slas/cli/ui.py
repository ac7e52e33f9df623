"""``slas ui``: the Gradio review app over the job store (blind pair ratings, leaderboard)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SlasTyper

app = SlasTyper()


@app.command()
def ui(
    host: Annotated[str, typer.Option("--host", help="address to bind; anything but loopback needs logins")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to serve on")] = 7860,
    credentials: Annotated[
        Path | None, typer.Option("--credentials", help="file of user:password lines (else $SLAS_UI_AUTH=user:password)")
    ] = None,
    mlflow_url: Annotated[
        str | None, typer.Option("--mlflow-url", help="MLflow UI address for run links (default: MLFLOW_TRACKING_URI when it is http)")
    ] = None,
) -> None:
    """Serve the review UI: rate two checkpoints' images of a `slas sample` set side by side, blind, and see
    win rates and Bradley–Terry scores. Binds to 127.0.0.1; another --host needs $SLAS_UI_AUTH or --credentials."""
    from slas.ui.auth import load_logins, require_safe_bind

    if not 1 <= port <= 65535:
        raise typer.BadParameter(f"{port} is not a port (1-65535)", param_hint="--port")
    if mlflow_url is not None and not mlflow_url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{mlflow_url!r} is not an http(s) address", param_hint="--mlflow-url")
    logins = load_logins(credentials)
    require_safe_bind(host, logins)  # before the store opens or Gradio imports: a refusal takes no time

    from slas.platform.db import open_store
    from slas.ui.app import launch

    with open_store() as store:
        where = host if ":" not in host else f"[{host}]"
        typer.echo(f"review UI on http://{where}:{port} (store: {store.where}; Ctrl-C stops)")
        launch(store, host=host, port=port, logins=logins, block=True, quiet=True, mlflow_ui=mlflow_url)
