"""Run a campaign end to end and print one JSON line with its figures: baseline accuracy and p50,
the best feasible candidate's parameters, speedup and accuracy drop, trial counts, wall time.

    .venv/bin/python bench/campaign.py [search_spaces/demo_digits.yaml] [--fresh]

Without --fresh a finished campaign only reports (resume semantics); --fresh deletes
runs/<name>/ first (the cached baseline included) so the wall time covers everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console

from optimizer.campaign.driver import run_campaign
from optimizer.config import load_campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", nargs="?", default="search_spaces/demo_digits.yaml")
    parser.add_argument("--fresh", action="store_true", help="start from nothing")
    args = parser.parse_args()
    campaign = load_campaign(Path(args.campaign))
    if args.fresh:
        shutil.rmtree(campaign.run_dir, ignore_errors=True)
    summary = run_campaign(campaign, Console(stderr=True))
    summary["bench"] = "campaign"
    summary["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
