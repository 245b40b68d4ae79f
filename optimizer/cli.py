"""``vitopt`` command line. A thin layer: parse, call the library, print with rich."""

from __future__ import annotations

import click

from .agent_commands import agent
from .campaign_commands import baseline, export, run, status
from .plugin_commands import plugin, plugins
from .review_commands import dashboard, report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitopt")
def main() -> None:
    """vitopt: find the fastest compressed vision transformer within an accuracy budget,
    with latency measured on the real device by its agent (python -m jetson_agent serve)."""


for command in (run, status, baseline, export, agent, dashboard, report, plugins, plugin):
    main.add_command(command)
