"""A real campaign whose study lives in a real PostgreSQL server, then optuna-dashboard (the real
server, as a user starts it) reading that study over its JSON API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import counted, write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState
from postgres_server import PostgresServer, free_port, postgres_fixture

from optimizer.cli import main

postgres = postgres_fixture()


def _get_json(url: str, server: subprocess.Popen[bytes], log: Path) -> Any:
    """GET `url`, waiting up to a minute for the server to answer at all."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"optuna-dashboard did not answer:\n{log.read_text()}"
                ) from None
            time.sleep(0.5)


@pytest.mark.slow
def test_campaign_on_postgres_read_by_the_dashboard(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # In-process (Ray is covered by test_campaign_e2e), and no latency-first cut: sub-millisecond
    # latencies sit within noise of each other.
    changes = {"search.trials": 3, "execution.workers": 0, "objective.latency_first_cut": False}
    campaign = write_campaign(tmp_path, **changes)

    result = CliRunner().invoke(main, ["run", str(campaign), "--json", "--storage", postgres.url])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(summary["trials"][state] for state in ("complete", "pruned", "failed")) == 3
    assert not (tmp_path / "runs" / "tiny" / "study.db").exists()

    study = optuna.load_study(study_name="tiny", storage=postgres.url)
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] is True and baseline.state == TrialState.COMPLETE
    assert baseline.user_attrs["accuracy"] > 0.5 and baseline.user_attrs["latency_ms"] > 0

    port, log = free_port(), tmp_path / "dashboard.log"
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), postgres.url]
    command += ["--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"]
    with log.open("wb") as output:
        dashboard = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        studies = _get_json(api, dashboard, log)["study_summaries"]
        [listed] = [s for s in studies if s["study_name"] == "tiny"]
        detail = _get_json(f"{api}/{listed['study_id']}", dashboard, log)
        assert detail["name"] == "tiny"
        assert len(detail["trials"]) == len(study.trials) >= 3
        assert detail["trials"][0]["user_attrs"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


# Where the connection is cut (tests/storage_cut.py): the N-th call of an RDBStorage method, after
# its first statement and before its commit. A run of this campaign on SQLite makes 7 trial reads
# before the baseline is told and about 25 more before the first trial is: the 20th read happens
# while trials are in flight (the driver re-reading the study, as in the CI failure this pins:
# Optuna wrapped the cut in StorageInternalError over a PendingRollbackError); the 2nd finishing
# write is the first trial's tell, a write whose commit is lost.
CUTS = {
    "trial read in flight": ("_get_trials", 20),
    "a trial's tell": ("set_trial_state_values", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_database_restart_mid_campaign_loses_nothing(
    postgres: PostgresServer, tmp_path: Path, cut: tuple[str, int]
) -> None:
    changes = {"search.trials": 4, "execution.workers": 2, "objective.latency_first_cut": False}
    campaign = write_campaign(tmp_path, **changes, storage={"url": postgres.url, "retry_s": 180})
    method, nth = cut
    handshake, log = tmp_path / "handshake", tmp_path / "run.log"
    handshake.mkdir()
    command = [sys.executable, str(Path(__file__).with_name("storage_cut.py")), method, str(nth)]
    with log.open("w") as output:  # read while it runs
        run = subprocess.Popen(
            [*command, str(handshake), "--", "run", str(campaign)],
            stdout=subprocess.DEVNULL,
            stderr=output,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 300
        while not (handshake / "paused").exists():  # the driver is inside the chosen call
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the driver never made call {nth} of {method}"
            time.sleep(0.2)
        postgres.stop()
        (handshake / "stopped").touch()
        # Down until the driver has retried (it says so), and a little longer.
        while "did not answer" not in log.read_text():
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline + 60, "the driver never retried"
            time.sleep(0.2)
        time.sleep(3)
        postgres.start()
        run.wait(timeout=600)
        stderr = log.read_text()
        assert run.returncode == 0, stderr[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
    assert "answered again" in stderr  # the driver noticed the outage and rode it out
    trials = optuna.load_study(study_name="tiny", storage=postgres.url).trials
    assert len(counted(trials)) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
