"""``vitopt agent ping|measure``: talk to a device agent by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from jetson_agent import spec as agent_spec
from optimizer.campaign.figures import speedup
from optimizer.device.client import TOKEN_ENV, AgentClient, AgentError, MeasurementFailed, Reference


def _client(url: str, token_file: Path | None, timeout: float) -> AgentClient:
    token = token_file.read_text().strip() if token_file else os.environ.get(TOKEN_ENV) or None
    return AgentClient(url, token, job_timeout_s=timeout)


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def info_table(info: dict[str, Any]) -> Table:
    table = Table(title=f"agent {info['device']['name']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    backend = info["backend"]
    known_clocks = {k: v for k, v in (info.get("clocks_mhz") or {}).items() if v}
    rows = [
        ("backend", f"{backend['name']} ({backend['version']})"),
        ("precisions", ", ".join(info["precisions"])),
        ("jetson", str(info["device"]["jetson"])),
        ("power mode", _fmt(info.get("power_mode"))),
        ("clocks (MHz)", json.dumps(known_clocks) if known_clocks else "—"),
        ("queue length", str(info["queue_length"])),
        ("jobs finished", str(info["jobs_finished"])),
        ("agent version", info["agent_version"]),
        ("auth", "bearer token" if info.get("auth") else "none"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def result_table(result: dict[str, Any]) -> Table:
    latency = result["latency_ms"]
    table = Table(title=f"{result['backend']['name']} on {result['device']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key in ("p50", "p90", "p99", "mean", "std", "min", "max"):
        table.add_row(f"{key} (ms)", _fmt(latency[key]))
    table.add_row("CV", f"{latency['cv'] * 100:.2f} %")
    table.add_row("iterations", str(latency["count"]))
    paired = result.get("paired")
    if paired:
        reference = paired["reference"]["latency_ms"]
        table.add_row(
            f"reference p50 (ms), {paired['reference']['precision']}", _fmt(reference["p50"])
        )
        table.add_row("reference iterations", str(reference["count"]))
        blocks = paired["block_iterations"]
        table.add_row(
            "rounds",
            f"{paired['rounds']} (blocks of {blocks['candidate']} / {blocks['reference']})",
        )
    if result.get("remeasured"):
        table.add_row("re-measured", result["remeasure_reason"])
    table.add_row("build time (s)", _fmt(result["build"]["time_s"]))
    cache = result["cache"]
    table.add_row(
        "cache",
        f"result {'hit' if cache['result_hit'] else 'miss'}, "
        f"engine {'hit' if cache['engine_hit'] else 'miss'}",
    )
    table.add_row("peak memory (MB)", _fmt(result.get("peak_memory_mb"), digits=1))
    power = result.get("power") or {}
    table.add_row("energy above idle (mJ/inf)", _fmt(power.get("energy_per_inference_mj")))
    table.add_row("settings", result["build"]["command"])
    return table


def speedup_line(paired: dict[str, Any]) -> str:
    """One line for a paired result: the speedup, its interval, and how the rounds stopped, e.g.
    ``speedup 1.42× [1.40–1.45] (95.9 % interval, 24 rounds, target ±2 % met)``."""
    low, high = paired["speedup_ci"]
    target = paired.get("target_halfwidth") or 0
    if not target:
        outcome = "no target"
    elif paired["target_met"]:
        outcome = f"target ±{target * 100:g} % met"
    elif paired["stopped_by"] == "time_cap":
        outcome = f"target ±{target * 100:g} % not met in {paired['timed_s']:.0f} s"
    else:
        outcome = f"target ±{target * 100:g} % not met in {paired['rounds']} rounds"
    return (
        f"speedup {speedup(paired['speedup'], [low, high])} "
        f"({paired['confidence'] * 100:.1f} % interval, {paired['rounds']} rounds, {outcome})"
    )


@click.group()
def agent() -> None:
    """Talk to a device agent (python -m jetson_agent serve on the device)."""


_url = click.argument("url")
_token = click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"file with the agent's bearer token (else ${TOKEN_ENV})",
)
_json = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


@agent.command()
@_url
@_token
@_json
def ping(url: str, token_file: Path | None, as_json: bool) -> None:
    """Show what the agent at URL is: device, backend, precisions, queue."""
    try:
        info = _client(url, token_file, 60).info()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        Console().print(info_table(info))


@agent.command()
@_url
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--precision", type=click.Choice(agent_spec.PRECISIONS), default="fp32", show_default=True
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--input-shape", help="full input shape, e.g. 1x3x224x224 (for dynamic models)")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    help="timed iterations per repeat  [default: 100; paired: at least "
    f"{agent_spec.DEFAULT_PAIRED_BLOCK_ITERATIONS} per block]",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    help=f"timed repeats  [default: 3; paired: at least {agent_spec.DEFAULT_PAIRED_ROUNDS} rounds]",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="time MODEL against this ONNX model (same inputs) in alternating blocks, and print the "
    "speedup with its 95 % interval (uploaded when the agent lacks it)",
)
@click.option(
    "--reference-precision",
    type=click.Choice(agent_spec.PRECISIONS),
    default="fp32",
    show_default=True,
)
@click.option(
    "--ratio-ci",
    type=click.FloatRange(min=0, max=1),
    help="paired: go on until the interval is within ± this fraction of the speedup "
    f"[default: {agent_spec.DEFAULT_RATIO_CI:g}]; 0 runs exactly --repeats rounds",
)
@click.option(
    "--max-time-s",
    type=click.FloatRange(min=0, min_open=True),
    help="paired: time cap of the rounds towards --ratio-ci  "
    f"[default: {agent_spec.DEFAULT_PAIRED_MAX_TIME_S:g}]",
)
@click.option(
    "--min-repeat-ms",
    type=click.FloatRange(min=0),
    help="least ms of a block (paired, default "
    f"{agent_spec.DEFAULT_PAIRED_MIN_REPEAT_MS:g}) or of a repeat (default 0: off)",
)
@click.option("--timeout", type=float, default=3600, show_default=True, help="seconds to wait")
@_token
@_json
def measure(
    url: str,
    model: Path,
    precision: str,
    batch_size: int,
    input_shape: str | None,
    warmup: int,
    iterations: int | None,
    repeats: int | None,
    reference: Path | None,
    reference_precision: str,
    ratio_ci: float | None,
    max_time_s: float | None,
    min_repeat_ms: float | None,
    timeout: float,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Measure the ONNX MODEL on the agent at URL and print its latency statistics; with
    --reference, its speedup over that model too, timed side by side."""
    if reference is None:
        for name, value in (("--ratio-ci", ratio_ci), ("--max-time-s", max_time_s)):
            if value is not None:
                raise click.UsageError(f"{name} applies to paired jobs: give --reference too")
    spec: dict[str, Any] = {"precision": precision, "batch_size": batch_size, "warmup": warmup}
    optional = {
        "iterations": iterations,
        "repeats": repeats,
        "ratio_ci": ratio_ci,
        "max_time_s": max_time_s,
        "min_repeat_ms": min_repeat_ms,
    }
    spec.update({key: value for key, value in optional.items() if value is not None})
    if input_shape:
        try:
            spec["input_shape"] = [int(d) for d in input_shape.lower().split("x")]
        except ValueError as exc:
            raise click.BadParameter(
                "use the form 1x3x224x224", param_hint="--input-shape"
            ) from exc
    console = Console(stderr=True)
    try:
        client = _client(url, token_file, timeout)
        with console.status("submitting…") as status:

            def show(job: dict[str, Any]) -> None:
                where = f" (position {job['queue_position']})" if job.get("queue_position") else ""
                status.update(f"{job['state']}{where}…")

            paired_with = Reference(reference, reference_precision) if reference else None
            result = client.measure(model, spec, on_update=show, reference=paired_with)
    except MeasurementFailed as exc:
        if as_json:
            click.echo(json.dumps(exc.result, indent=2))
        raise click.ClickException(f"measurement failed: {exc}") from exc
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    Console().print(result_table(result))
    if result.get("paired"):
        click.echo(speedup_line(result["paired"]))


@agent.command()
@_url
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(agent_spec.PRECISIONS),
    default="fp32",
    show_default=True,
    help="the precision the agent builds MODEL at, as a timing job would",
)
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npy file: rows of the model's one input, each run with a batch of 1",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="with --inputs: write the outputs here (.npy; several outputs: OUT.K.npy)",
)
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="score MODEL on this campaign's held-out split, on the device and on this host",
)
@click.option("--timeout", type=float, default=3600, show_default=True, help="seconds to wait")
@_token
def evaluate(
    url: str,
    model: Path,
    precision: str,
    inputs: Path | None,
    out: Path | None,
    campaign_file: Path | None,
    timeout: float,
    token_file: Path | None,
) -> None:
    """Run the ONNX MODEL on the agent at URL, built at --precision as the device deploys it,
    on --inputs (writing the outputs to --out), or score it on a --campaign's held-out split on
    the device and on this host side by side (labels never leave this host)."""
    if (inputs is None) == (campaign_file is None):
        raise click.UsageError("give --inputs (with --out) or --campaign")
    if inputs is not None and out is None:
        raise click.UsageError("--inputs needs --out, where the outputs are written")
    client = _client(url, token_file, timeout)
    try:
        if inputs is not None:
            from jetson_agent import npy

            try:
                array = npy.parse(inputs.read_bytes()).to_numpy()
            except npy.NpyError as exc:
                raise click.BadParameter(str(exc), param_hint="--inputs") from exc
            outputs = client.evaluate(model, precision, array)
            _write_outputs(outputs, out)
        else:
            _score_both_ways(client, model, precision, campaign_file)
    except MeasurementFailed as exc:
        raise click.ClickException(f"evaluation failed: {exc}") from exc
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc


def _write_outputs(outputs: list[Any], out: Path) -> None:
    from jetson_agent import npy

    paths = (
        [out] if len(outputs) == 1 else [out.with_suffix(f".{k}.npy") for k in range(len(outputs))]
    )
    for array, path in zip(outputs, paths, strict=True):
        path.write_bytes(npy.dump_numpy(array))
        click.echo(f"{path}: {'x'.join(str(d) for d in array.shape)} {array.dtype}")


def _score_both_ways(client: AgentClient, model: Path, precision: str, campaign_file: Path) -> None:
    from optimizer.config import CampaignError, load_campaign
    from optimizer.plugin_api.technique import OnnxArtifact
    from optimizer.plugin_host.registry import plugin_registry
    from optimizer.trial.evaluation import device_outputs, scores, test_inputs
    from optimizer.trial.outcome import DISAGREEMENT
    from optimizer.trial.pipeline import load_splits

    try:
        campaign = load_campaign(campaign_file)
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from exc
    task = plugin_registry(campaign.plugins.disable).task(campaign.task.name)
    test = load_splits(campaign).test
    limit = int(client.info()["limits"]["max_upload_bytes"])
    artifact = OnnxArtifact(model, precision)
    outputs = device_outputs(client.evaluate, artifact, test_inputs(test), limit)
    scored = scores(
        dict(task.evaluate_onnx_metrics(artifact.path, test)),
        dict(task.evaluate_outputs(outputs, test)),
    )
    metric = task.metric_name
    click.echo(f"{metric} on the device ({precision}): {scored['device_accuracy'] * 100:.2f}%")
    click.echo(f"{metric} on this host (onnxruntime): {scored['host_accuracy'] * 100:.2f}%")
    if scored["accuracy_disagreement"]:
        raise click.ClickException(
            f"the device and this host differ by more than {DISAGREEMENT * 100:.1f} points"
        )
