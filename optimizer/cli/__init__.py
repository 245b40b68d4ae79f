"""``vitopt`` command line. A thin layer: parse, call the library, print with rich.

Commands are imported when they run, not when ``vitopt`` starts: the campaign commands pull in
torch and timm (seconds), which ``vitopt plugins`` or ``vitopt agent ping`` do not need.
"""

from __future__ import annotations

import importlib

import click

# Command name -> "module:attribute", in the order --help lists them.
COMMANDS = {
    "run": "campaign_commands:run",
    "status": "status_commands:status",
    "baseline": "campaign_commands:baseline",
    "export": "campaign_commands:export",
    "agent": "agent_commands:agent",
    "dashboard": "review_commands:dashboard",
    "report": "review_commands:report",
    "plugins": "plugin_commands:plugins",
    "plugin": "plugin_commands:plugin",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitopt")
def main() -> None:
    """vitopt: find the fastest compressed vision transformer within an accuracy budget,
    with latency measured on the real device by its agent (python -m jetson_agent serve)."""
