"""``vitopt plugins`` (what is installed) and ``vitopt plugin new`` (scaffold a plugin package)."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import keyword
import re
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from optimizer.config import Campaign, CampaignError, ParamOverride, load_campaign
from optimizer.plugin_api.technique import STAGES, ParamSpec
from optimizer.plugin_host.checks import NAMED_HOOKS
from optimizer.plugin_host.manager import DISABLE_ENV, disabled_names
from optimizer.plugin_host.survey import PluginStatus, Survey, survey

# ---------------------------------------------------------------------------------------------
# vitopt plugins


def _range(spec: ParamSpec) -> str:
    if spec.kind in ("float", "int"):
        text = f"[{_value(spec.low)}, {_value(spec.high)}]"
        if spec.log:
            text += " log"
        if spec.step is not None:
            text += f" step {_value(spec.step)}"
        return text
    choices = (False, True) if spec.kind == "bool" else spec.choices or ()
    return "{" + ", ".join(_value(c) for c in choices) + "}"


def _condition(spec: ParamSpec) -> str:
    return " and ".join(
        f"{dep} in {{{', '.join(_value(v) for v in allowed)}}}"
        if len(allowed) > 1
        else f"{dep}={_value(allowed[0]) if allowed else '?'}"
        for dep, allowed in spec.when.items()
    )


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _override_text(override: ParamOverride | None) -> str:
    if override is None:
        return ""
    if override.fixed is not None:
        return f"fixed {_value(override.fixed)}"
    parts = [
        f"{key} {_value(getattr(override, key))}"
        for key in ("low", "high", "log")
        if getattr(override, key) is not None
    ]
    if override.choices is not None:
        parts.append("choices " + ", ".join(_value(c) for c in override.choices))
    return "; ".join(parts)


def _status(plugin: PluginStatus, campaign_disable: set[str], env_disable: set[str]) -> str:
    if plugin.disabled:
        by = [
            label
            for label, names in (("campaign", campaign_disable), (f"${DISABLE_ENV}", env_disable))
            if plugin.source.name in names
        ]
        text = f"disabled ({', '.join(by)})"
        return f"{text}, broken" if plugin.error else text
    return "[red]BROKEN[/]" if plugin.error else "[green]enabled[/]"


def _provides(plugin: PluginStatus) -> str:
    """What a plugin registers besides techniques (tasks, data sources, model families,
    lifecycle hooks)."""
    parts = []
    if plugin.tasks:
        parts.append("tasks: " + ", ".join(plugin.tasks))
    if plugin.datasets:
        parts.append("data sources: " + ", ".join(plugin.datasets))
    if plugin.model_families:
        covered = (
            f"{name} ({', '.join(family.model_names)})"
            for name, family in plugin.model_families.items()
        )
        parts.append("model families: " + ", ".join(covered))
    others = [
        h.removeprefix("vitopt_")
        for h in plugin.hooks
        if h not in ("vitopt_register_techniques", *NAMED_HOOKS)
    ]
    if others:
        parts.append("hooks: " + ", ".join(others))
    if not plugin.hooks:
        parts.append("no hooks (are its functions decorated with @hookimpl?)")
    return "; ".join(parts)


def plugin_header(plugin: PluginStatus, campaign_disable: set[str], env_disable: set[str]) -> str:
    source = plugin.source
    module = "" if source.builtin else f" [dim](module {escape(source.module)})[/]"
    return (
        f"[bold]{escape(source.name)}[/]  {escape(source.origin)}  "
        f"{_status(plugin, campaign_disable, env_disable)}{module}"
    )


def parameters_table(specs: list[ParamSpec], overrides: dict[str, ParamOverride] | None) -> Table:
    """One row per declared parameter: kind, range or choices (and condition), default, and
    what the campaign file makes of it."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("parameter", "kind", "values", "default"):
        table.add_column(column, no_wrap=column != "values")
    if overrides is not None:
        table.add_column("campaign")
    for spec in specs:
        values = escape(_range(spec))
        if spec.when:
            values += f"\n[dim]if {escape(_condition(spec))}[/]"
        row = [escape(spec.name), spec.kind, values, escape(_value(spec.default))]
        if overrides is not None:
            row.append(escape(_override_text(overrides.get(spec.name))))
        table.add_row(*row)
    return table


def print_plugins(
    console: Console,
    result: Survey,
    campaign_disable: set[str],
    env_disable: set[str],
    overrides: dict[str, ParamOverride] | None,
) -> None:
    """Each plugin: a header line, then each technique with its parameters."""
    for plugin in result.plugins:
        console.print(plugin_header(plugin, campaign_disable, env_disable), soft_wrap=True)
        if plugin.error:
            console.print(f"  [red]{escape(plugin.error)}[/]", soft_wrap=True)
        for technique in plugin.techniques:
            console.print(f"  technique [bold]{escape(technique.name)}[/], stage {technique.stage}")
            specs = list(technique.search_space())
            if specs:
                console.print(Padding(parameters_table(specs, overrides), (0, 0, 0, 4)))
                for spec in specs:
                    if spec.help:
                        line = f"[dim]{escape(spec.name)}: {escape(spec.help)}[/]"
                        console.print(Padding(line, (0, 0, 0, 4)))
            else:
                console.print("    (no parameters)")
        provides = _provides(plugin)
        if provides and not plugin.error:
            console.print(f"  {escape(provides)}")
        console.print()


def _spec_json(spec: ParamSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "default": spec.default,
        "low": spec.low,
        "high": spec.high,
        "log": spec.log,
        "step": spec.step,
        "choices": list(spec.choices) if spec.choices is not None else None,
        "when": {k: list(v) for k, v in spec.when.items()},
        "help": spec.help,
    }


def plugins_json(
    result: Survey, campaign_disable: set[str], env_disable: set[str]
) -> dict[str, Any]:
    plugins = []
    for plugin in result.plugins:
        source = plugin.source
        plugins.append(
            {
                "name": source.name,
                "source": source.origin,
                "distribution": source.distribution,
                "version": source.version,
                "module": source.module,
                "disabled": plugin.disabled,
                "disabled_by": [
                    by
                    for by, names in (("campaign", campaign_disable), ("env", env_disable))
                    if source.name in names
                ],
                "error": plugin.error,
                "hooks": plugin.hooks,
                "tasks": plugin.tasks,
                "data_sources": plugin.datasets,
                "model_families": list(plugin.model_families),
                "techniques": [
                    {
                        "name": technique.name,
                        "stage": technique.stage,
                        "params": [_spec_json(spec) for spec in technique.search_space()],
                    }
                    for technique in plugin.techniques
                ],
            }
        )
    return {
        "plugins": plugins,
        "errors": result.errors,
        "unknown_disabled": result.unknown_disabled,
    }


@click.command()
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="apply this campaign's plugins.disable, and show its search.space overrides",
)
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
def plugins(campaign_file: Path | None, as_json: bool) -> None:
    """List installed plugins: their source, techniques, stages and search parameters.

    Plugins come from the built-ins and from installed distributions' "vitopt.plugins" entry
    points. $VITOPT_DISABLE_PLUGINS (comma-separated names) and, with --campaign, the campaign's
    plugins.disable turn plugins off. Exits 1 when an enabled plugin is broken (a campaign would
    refuse to start)."""
    campaign: Campaign | None = None
    if campaign_file is not None:
        try:
            campaign = load_campaign(campaign_file)
        except CampaignError as exc:
            raise click.ClickException(str(exc)) from exc
    campaign_disable = set(campaign.plugins.disable) if campaign else set()
    env_disable = disabled_names()  # no argument: the environment's alone
    result = survey(campaign_disable)
    if as_json:
        click.echo(json.dumps(plugins_json(result, campaign_disable, env_disable), default=str))
    else:
        overrides = dict(campaign.search.space) if campaign else None
        console = Console()
        print_plugins(console, result, campaign_disable, env_disable, overrides)
        for name in result.unknown_disabled:
            console.print(f"[yellow]note:[/] {escape(name)!r} is disabled, but no plugin has it")
    err = Console(stderr=True, soft_wrap=True)
    for plugin in result.plugins:
        if plugin.error and plugin.disabled:
            err.print(f"[yellow]disabled, and broken:[/] {escape(plugin.error)}")
    for error in result.errors:
        err.print(f"[red]Error:[/] {escape(error)}")
    if result.errors:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# vitopt plugin new

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TEMPLATES = "templates/plugin"
_FILES = {  # template -> file in the new package ({package} is the Python package)
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "package/__init__.py.tmpl": "{package}/__init__.py",
    "package/plugin_{stage}.py.tmpl": "{package}/plugin.py",
    "tests/test_{tests}.py.tmpl": "tests/test_plugin.py",
}


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` gets; ClickException for an unusable one."""
    ident = name.replace("-", "_")
    if not _NAME.fullmatch(ident) or keyword.iskeyword(ident):
        raise click.ClickException(
            f"{name!r} is not a valid plugin name: it must be a Python identifier once '-' is "
            "replaced by '_' (letters, digits, '_' or '-', starting with a letter)"
        )
    return {
        "name": ident,  # entry point, technique and parameter prefix
        "dist": f"vitopt-{ident.replace('_', '-')}",
        "package": f"vitopt_{ident}",
        "Class": "".join(part[:1].upper() + part[1:] for part in ident.split("_") if part),
    }


def _taken(ident: str) -> str | None:
    """Who already uses ``ident`` as a plugin, technique or parameter prefix, if anyone."""
    for plugin in survey().plugins:
        if plugin.source.name == ident:
            return f"{plugin.source.describe()} has that name"
        for technique in plugin.techniques:
            if technique.name == ident:
                return f"{plugin.source.describe()} has a technique {ident!r}"
            for spec in technique.search_space():
                if spec.name.split(".")[0] == ident:
                    return f"{plugin.source.describe()} declares the parameter {spec.name!r}"
    return None


def _vitopt_version() -> str:
    try:
        return importlib.metadata.version("vitopt")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def scaffold(name: str, stage: str, directory: Path) -> tuple[Path, list[Path]]:
    """Write the package ``directory/vitopt-NAME/`` from the templates; returns its folder and
    files. ClickException (and nothing written) for a bad or taken name or an existing folder."""
    names = plugin_names(name)
    root = directory / names["dist"]
    if root.exists():
        raise click.ClickException(
            f"{root} already exists; choose another name or --dir (nothing was written)"
        )
    taken = _taken(names["name"])
    if taken:
        raise click.ClickException(f"the plugin name {names['name']!r} is taken: {taken}")
    values = {**names, "stage": stage, "vitopt_version": _vitopt_version()}
    tests = "onnx" if stage == "quantize" else "torch"
    templates = importlib.resources.files(__package__).joinpath(_TEMPLATES)
    written: list[Path] = []
    for template, target in _FILES.items():
        source = templates.joinpath(template.format(stage=stage, tests=tests))
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        path = root / target.format(package=names["package"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return root, written


@click.group()
def plugin() -> None:
    """Write plugins: `vitopt plugin new NAME` scaffolds an installable package."""


@plugin.command("new")
@click.argument("name")
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    default="prune",
    show_default=True,
    help="the pipeline stage the technique runs in",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where to create the vitopt-NAME/ folder",
)
def new(name: str, stage: str, directory: Path) -> None:
    """Scaffold the plugin package vitopt-NAME/: pyproject.toml with the entry point, a
    working technique skeleton for STAGE (NAME.enabled, default false: do nothing), a test and
    a README. Install it with `pip install -e vitopt-NAME`, then `vitopt plugins` lists it."""
    root, written = scaffold(name, stage, directory)
    console = Console()
    ident = plugin_names(name)["name"]
    console.print(f"created {escape(str(root))}/ ({stage}-stage technique {ident!r}):")
    for path in written:
        console.print(f"  {escape(str(path.relative_to(root)))}")
    console.print(
        "next: put your logic in "
        f"{plugin_names(name)['package']}/plugin.py (where it says 'your technique goes here'), "
        f"then:\n  cd {escape(str(root))} && pip install -e . && pytest && vitopt plugins",
        soft_wrap=True,
    )
