"""``python -m optimizer`` is ``vitopt``."""

from optimizer.cli import main

main(prog_name="vitopt")
