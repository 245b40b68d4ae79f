"""``vitopt run | status | baseline | export``: campaigns from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
from optuna.trial import FrozenTrial
from rich.console import Console

from optimizer.campaign.driver import (
    CampaignFailed,
    CampaignInterrupted,
    against_baseline,
    agent_endpoint,
    prepare,
    run_campaign,
)
from optimizer.campaign.executor import ClusterUnavailable
from optimizer.campaign.figures import speedup
from optimizer.campaign.storage import StorageUnavailable
from optimizer.campaign.study import (
    RESOLVED_PARAMS_ATTR,
    baseline_trial,
    metric_label,
)
from optimizer.cli.study_views import (
    campaign_arg,
    load_campaign_file,
    open_existing,
    pick_trial,
    print_summary,
    storage_option,
)
from optimizer.config import Campaign, CampaignError
from optimizer.device.client import AgentError
from optimizer.device.pool import AgentPool
from optimizer.plugin_host.manager import PluginError
from optimizer.trial.outcome import TrialOutcome, TrialRequest
from optimizer.trial.pipeline import run_trial

USER_ERRORS = (
    CampaignError,
    PluginError,
    CampaignFailed,
    AgentError,
    FileNotFoundError,
    StorageUnavailable,
    ClusterUnavailable,
)
_agents_option = click.option(
    "--agent",
    "agent_urls",
    multiple=True,
    metavar="URL",
    help="a device agent URL; repeat for a pool (overrides agents.urls)",
)


@click.command()
@campaign_arg
@click.option("--trials", type=click.IntRange(min=1), help="total trials (overrides search.trials)")
@click.option("--workers", type=click.IntRange(min=0), help="parallel trials; 0 = in-process")
@_agents_option
@storage_option
@click.option(
    "--ray-address",
    help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:10001 "
    "(overrides execution.ray_address; see docs/distributed.md)",
)
@click.option("--json", "as_json", is_flag=True, help="print the final summary as JSON")
def run(
    campaign_file: Path,
    trials: int | None,
    workers: int | None,
    agent_urls: tuple[str, ...],
    storage: str | None,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Run a search campaign, or resume it: finished trials are kept.

    Trials run in parallel as Ray tasks (a local Ray runtime, or a cluster with --ray-address)
    and are measured by the campaign's device agents, the least busy healthy one first.
    Ctrl-C stops within seconds; the same command resumes."""
    campaign = load_campaign_file(
        campaign_file,
        storage,
        **{"search.trials": trials, "execution.ray_address": ray_address},
    )
    console = Console(stderr=as_json)
    try:
        summary = run_campaign(campaign, console, workers, list(agent_urls))
    except CampaignInterrupted as exc:
        Console(stderr=True).print(f"[yellow]{exc}[/]", soft_wrap=True)
        raise SystemExit(130) from exc
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_summary(console, summary)


def _run_one(
    campaign: Campaign,
    console: Console,
    agent_urls: tuple[str, ...],
    *,
    number: int,
    params: dict[str, Any] | None,
    work_dir: Path,
    base: FrozenTrial | None = None,
    save_weights: Path | None = None,
) -> TrialOutcome:
    """One trial outside the study, in this process (``params=None``: the baseline's), timed
    against the campaign's baseline ``base`` (None: against itself)."""
    try:
        with agent_endpoint(campaign, console, list(agent_urls)) as endpoint:
            setup = prepare(campaign, console, endpoint)
            return run_trial(
                TrialRequest(
                    campaign=campaign,
                    number=number,
                    params=dict(setup.space.baseline) if params is None else params,
                    checkpoint=setup.checkpoint,
                    agents=AgentPool(*setup.pool_args()),
                    agent_token=endpoint.token,
                    device_info=setup.device_info,
                    work_dir=work_dir.resolve(),
                    **against_baseline(campaign, base),
                    evaluate_on=setup.evaluate_on,
                    save_weights=save_weights.resolve() if save_weights else None,
                )
            )
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@campaign_arg
@_agents_option
@storage_option
def baseline(campaign_file: Path, agent_urls: tuple[str, ...], storage: str | None) -> None:
    """Measure the uncompressed model only: its accuracy and latency on the device."""
    campaign = load_campaign_file(campaign_file, storage)
    console = Console()
    outcome = _run_one(
        campaign,
        console,
        agent_urls,
        number=0,
        params=None,
        work_dir=campaign.run_dir / "baseline-measure",
    )
    if outcome.state != "COMPLETE":
        raise click.ClickException(f"baseline failed: {outcome.attrs.get('fail_reason')}")
    attrs = outcome.attrs
    console.print(
        f"baseline {campaign.model.name}: {metric_label(attrs)} {attrs['accuracy'] * 100:.2f}%, "
        f"p50 {attrs['latency_p50_ms']:.3f} ms (p90 {attrs['latency_p90_ms']:.3f}, CV "
        f"{attrs['latency_cv'] * 100:.1f}%) on {attrs['device']} ({attrs['backend_version']}), "
        f"{attrs['params_count']:,} parameters, {attrs['macs']:,} MACs"
    )


@click.command()
@campaign_arg
@click.option("--trial", "which", default="best", show_default=True, help="a trial number or best")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@_agents_option
@storage_option
def export(
    campaign_file: Path, which: str, out: Path, agent_urls: tuple[str, ...], storage: str | None
) -> None:
    """Rebuild a candidate deterministically: ONNX model, safetensors weights and a report."""
    campaign = load_campaign_file(campaign_file, storage)
    study = open_existing(campaign)
    trial = pick_trial(study, which)
    base = baseline_trial(study)
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    outcome = _run_one(
        campaign,
        console,
        agent_urls,
        number=trial.number,
        params=dict(trial.user_attrs[RESOLVED_PARAMS_ATTR]),
        work_dir=out / "work",
        base=None if base is None or base.number == trial.number else base,
        save_weights=out / "model.safetensors",
    )
    if outcome.state != "COMPLETE":
        raise click.ClickException(f"rebuild failed: {outcome.attrs.get('fail_reason')}")
    shutil.copy(outcome.artifacts["model.onnx"], out / "model.onnx")
    shutil.copy(outcome.artifacts["measurement.json"], out / "measurement.json")
    recorded = {
        k: trial.user_attrs.get(k) for k in ("accuracy", "latency_ms", "speedup", "speedup_ci")
    }
    report = {
        "campaign": campaign.name,
        "trial": trial.number,
        "params": trial.user_attrs[RESOLVED_PARAMS_ATTR],
        "recorded": recorded,
        "rebuilt": {
            k: outcome.attrs.get(k) for k in ("accuracy", "latency_p50_ms", "speedup", "speedup_ci")
        },
        "attrs": outcome.attrs,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))
    console.print(
        f"trial {trial.number} rebuilt in {out}: {metric_label(outcome.attrs)} "
        f"{outcome.attrs['accuracy'] * 100:.2f}% "
        f"(recorded {trial.user_attrs.get('accuracy', float('nan')) * 100:.2f}%), "
        f"p50 {outcome.attrs['latency_p50_ms']:.3f} ms, "
        f"{speedup(outcome.attrs['speedup'], outcome.attrs.get('speedup_ci'))} the baseline's "
        f"speed (recorded {speedup(recorded['speedup'], recorded['speedup_ci'])})"
    )


def _markdown(report: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(report["params"].items()))
    rec, new = report["recorded"], report["rebuilt"]
    return (
        f"# {report['campaign']}: trial {report['trial']}\n\n"
        f"| parameter | value |\n|---|---|\n{rows}\n\n"
        f"| | recorded | rebuilt |\n|---|---|---|\n"
        f"| {metric_label(report['attrs'])} | {rec['accuracy']} | {new['accuracy']} |\n"
        f"| p50 latency (ms) | {rec['latency_ms']} | {new['latency_p50_ms']} |\n"
        f"| speedup | {rec['speedup']} | {new['speedup']} |\n"
    )
