"""``vitopt dashboard | report``: review a campaign, live in optuna-dashboard or as a folder."""

from __future__ import annotations

import errno
import signal
import sys
import warnings
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from rich.console import Console

from optimizer.campaign.note import name_objectives, write_note
from optimizer.campaign.study import artifact_store, baseline_trial, trial_metric
from optimizer.cli.study_views import (
    campaign_arg,
    load_campaign_file,
    open_existing,
    storage_option,
)
from optimizer.review.report import write_report
from optimizer.review.report_data import ReportError


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without a log line per request (the page makes dozens)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command()
@campaign_arg
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on; 0.0.0.0 shows the study to the whole network, unauthenticated",
)
@storage_option
def dashboard(campaign_file: Path, port: int, host: str, storage: str | None) -> None:
    """Open the campaign's study in optuna-dashboard, with its artifacts (each trial's
    model.onnx and measurement.json), until Ctrl-C.

    Run it where 'vitopt run' ran: the study and runs/NAME/artifacts are found from there."""
    from optuna_dashboard import get_note, wsgi

    campaign = load_campaign_file(campaign_file, storage)
    study = open_existing(campaign)
    # A study recorded before vitopt wrote them: label the objectives and write the note now.
    name_objectives(study, campaign, trial_metric(baseline_trial(study)))
    if not get_note(study):
        write_note(study, campaign)
    app = wsgi(study._storage, artifact_store=artifact_store(campaign))
    # The dashboard's importance plot says so on every refresh of a small study.
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
    try:
        server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"port {port} on {host} is in use: choose another with --port"
            ) from exc
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/dashboard/studies/{study._study_id}"
    click.echo(f"optuna-dashboard for campaign {campaign.name!r}: {url}")
    click.echo("Ctrl-C stops it.")
    sys.stdout.flush()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("dashboard stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()


@click.command()
@campaign_arg
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="folder for report.html, the PNG figures and summary.json",
)
@storage_option
def report(campaign_file: Path, out: Path, storage: str | None) -> None:
    """Write a self-contained review of the campaign: report.html (opens offline), PNG
    figures (latency vs top-1 with the feasible region, Pareto front, parameter importances,
    history) and summary.json."""
    campaign = load_campaign_file(campaign_file, storage)
    study = open_existing(campaign)
    try:
        data = write_report(study, campaign, out)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console()
    console.print(f"report for {campaign.name!r} written to {out}:")
    for name in ["report.html", *data["png"].values(), "summary.json"]:
        console.print(f"  {out / name}")
    if data["importances_skipped"]:
        console.print(f"[yellow]parameter importances skipped:[/] {data['importances_skipped']}")
