"""`dtlens explore PATH`: the explorer, a local web app over a run, a study or a reproduction."""

from __future__ import annotations

import errno
import webbrowser
from pathlib import Path

import typer

from cli.common import console, flag, user_errors
from dtlens.errors import DtlensError

app = typer.Typer()


@app.command("explore")
@user_errors
def explore_cmd(
    path: Path = typer.Argument(
        ..., help="A run folder, a study or a reproduction (reproduce --out)."
    ),
    port: int = typer.Option(
        None, help="Port (default 8765, where the report links; 0: any free one)."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; 0.0.0.0 shares it on your network."
    ),
    no_browser: bool = flag(False, "--no-browser", help="Do not open a browser."),
) -> None:
    """Browse results in a web browser: Table 1 and curves over seeds; per run and epoch every
    head's attention, attribution, action lens, patching, ablation, CKA, gradients and a rollout
    replay. Computes what is missing from checkpoints, into the run's own folder. Ctrl-C stops."""
    from dtlens.explore.server import DEFAULT_PORT, make_server

    port = DEFAULT_PORT if port is None else port
    try:
        server = make_server(path, host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise DtlensError(f"port {port} is in use: pass --port N (or --port 0)") from None
        raise
    bound_host, bound_port = server.server_address[:2]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else bound_host}:{bound_port}/"
    console.print(
        f"dtlens explore: {server.explorer.catalog.root} at {url}", highlight=False, soft_wrap=True
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"listening on {host}: anyone who can reach this machine on port {bound_port} can "
            "browse these results and start computations",
            highlight=False,
            soft_wrap=True,
        )
    if not no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.explorer.jobs.shutdown()
        server.server_close()
