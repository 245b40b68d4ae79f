"""``python -m optimizer`` is ``vitopt``."""

from .cli import main

main(prog_name="vitopt")
