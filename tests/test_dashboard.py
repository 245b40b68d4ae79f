"""Reviewing a campaign: one real finished campaign, then ``vitopt dashboard`` (the real
optuna-dashboard, read over its HTTP API and rendered in headless Chromium), the study note the
driver writes, and ``vitopt report``."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState
from optuna_dashboard import get_note
from postgres_server import free_port

from optimizer.campaign.figures import ms, pct, points, speedup
from optimizer.campaign.note import digest, name_objectives, render_note, write_note
from optimizer.campaign.study import baseline_trial, best_feasible
from optimizer.cli import main
from optimizer.config import load_campaign
from optimizer.review.report import write_report
from optimizer.review.report_data import ReportError, importances, pareto_front

_VITOPT = (sys.executable, "-m", "optimizer")
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
MISSING_CHROMIUM = "Chromium not installed (apt-get install chromium); .ci/run installs it"
# What a reviewer compares candidates by: every trial that measured must show them.
REVIEW_ATTRS = (
    "speedup",
    "accuracy_drop",
    "latency_p50_ms",
    "params_count",
    "macs",
    "model_size_bytes",
    "device",
    "backend",
)


@dataclass
class Finished:
    folder: Path
    campaign: Path
    storage: str

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=self.storage)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One small campaign, run to the end by ``vitopt run`` as a user runs it."""
    folder = tmp_path_factory.mktemp("campaign")
    changes = {"search.trials": 4, "execution.workers": 0, "objective.latency_first_cut": False}
    campaign = write_campaign(folder, **changes)
    run = subprocess.run(
        [*_VITOPT, "run", str(campaign)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return Finished(folder, campaign, f"sqlite:///{folder}/runs/tiny/study.db")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium, looked for before the (module-scoped) campaign runs."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail(MISSING_CHROMIUM)
    pytest.skip(MISSING_CHROMIUM)


def _get(url: str, server: subprocess.Popen[str], log: Path) -> bytes:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not answer:\n{log.read_text()}") from None
            time.sleep(0.5)


def _start_dashboard(finished: Finished, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``vitopt dashboard`` as a user starts it, and the URL it prints."""
    out, err = tmp_path / "dashboard.out", tmp_path / "dashboard.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(
            [*_VITOPT, "dashboard", str(finished.campaign), "--port", str(free_port())],
            cwd=finished.folder,
            stdout=stdout,
            stderr=stderr,
            text=True,
            # Ctrl-C reaches it as in a terminal, even where this test's runner ignores SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    deadline = time.monotonic() + 120
    while not (found := re.search(r"http://\S+", out.read_text())):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"no URL printed:\n{out.read_text()}\n{err.read_text()}")
        time.sleep(0.3)
    return server, found.group(0)


def _render(chromium: str, url: str, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,1000",
            "--virtual-time-budget=10000",
            *mode,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _page_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


@pytest.mark.slow
def test_dashboard_serves_the_campaign(chromium: str, finished: Finished, tmp_path: Path) -> None:
    study = finished.study()
    server, url = _start_dashboard(finished, tmp_path)
    log = tmp_path / "dashboard.err"
    try:
        match = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/dashboard/studies/(\d+)", url)
        assert match, url
        root, study_id = match.group(1), int(match.group(2))
        assert study_id == study._study_id
        detail = json.loads(_get(f"{root}/api/studies/{study_id}", server, log))

        assert detail["name"] == "tiny"
        assert detail["objective_names"] == ["p50 latency (ms)"]
        assert detail["note"]["body"] == get_note(study)
        served = {t["number"]: t for t in detail["trials"]}
        assert sorted(served) == [t.number for t in study.trials]
        for trial in study.trials:
            shown = served[trial.number]
            assert shown["state"] == trial.state.name.capitalize()
            assert {p["name"]: p["param_external_value"] for p in shown["params"]} == {
                k: str(v) for k, v in trial.params.items()
            }
            attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
            # Feasibility: the list-form constraints, as the study holds them.
            assert shown["constraints"] == trial.system_attrs["constraints"]
            feasible = trial.state == TrialState.COMPLETE and all(
                c <= 0 for c in shown["constraints"]
            )
            assert attrs["feasible"] == str(feasible)
            if trial.state != TrialState.COMPLETE:
                continue
            for key in REVIEW_ATTRS:
                assert attrs[key] == str(trial.user_attrs[key]), key
            artifacts = {a["filename"]: a for a in shown["artifacts"]}
            assert set(artifacts) == {"model.onnx", "measurement.json", "trial.log"}
            base = f"{root}/artifacts/{study_id}/{shown['trial_id']}"
            model = _get(f"{base}/{artifacts['model.onnx']['artifact_id']}", server, log)
            stored = (
                finished.folder / "runs/tiny/artifacts" / artifacts["model.onnx"]["artifact_id"]
            )
            assert len(model) > 1000 and model == stored.read_bytes()
            measurement = json.loads(
                _get(f"{base}/{artifacts['measurement.json']['artifact_id']}", server, log)
            )
            assert measurement["latency_ms"]["p50"] == trial.user_attrs["latency_p50_ms"]

        # The page itself, as a browser renders it.
        shot = tmp_path / "study-page.png"
        rendered = _render(chromium, url, tmp_path, f"--screenshot={shot}")
        assert shot.exists(), rendered.stderr[-3000:]
        assert shot.read_bytes().startswith(PNG_HEADER) and shot.stat().st_size > 20_000
        print(f"\nscreenshot of the study page: {shot}")
        page = _page_text(_render(chromium, url, tmp_path, "--dump-dom").stdout)
        assert "tiny" in page and "p50 latency (ms)" in page
        best = served[detail["best_trials"][0]["number"]]
        assert f"Best Trial (number={best['number']})" in page
        for trial in study.trials[1:]:
            assert any(name in page for name in trial.params), page[:2000]
        trials_page = _page_text(_render(chromium, f"{url}/trials", tmp_path, "--dump-dom").stdout)
        for trial in study.trials:
            assert f"Trial {trial.number}" in trials_page, trials_page[:2000]
        note_page = _page_text(_render(chromium, f"{url}/note", tmp_path, "--dump-dom").stdout)
        assert "vitopt campaign tiny" in note_page and "Best feasible" in note_page
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert "dashboard stopped" in (tmp_path / "dashboard.out").read_text()


@pytest.mark.slow
def test_dashboard_port_in_use_is_one_line(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(finished.folder)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["dashboard", str(finished.campaign), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert (
        result.output == f"Error: port {port} on 127.0.0.1 is in use: choose another with --port\n"
    )


def test_dashboard_missing_study_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(tmp_path)
    result = CliRunner().invoke(main, ["dashboard", str(campaign), "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: no study 'tiny' in sqlite:///runs/tiny/study.db")


@pytest.mark.slow
def test_note_written_by_the_driver_matches_the_study(finished: Finished) -> None:
    study = finished.study()
    note = get_note(study)
    assert study.metric_names == ["p50 latency (ms)"]
    base, best = baseline_trial(study), best_feasible(study)
    assert base is not None and best is not None
    battrs = base.user_attrs
    assert "## vitopt campaign `tiny`" in note
    assert f"- **Device**: {battrs['device']}" in note
    assert f"- **Backend**: {battrs['backend_version']}" in note
    assert "top-1 at most 15.00 pt below the baseline's" in note
    assert f"### Baseline: trial {base.number}" in note
    assert f"top-1 **{pct(battrs['accuracy'])}**, p50 **{ms(battrs['latency_ms'])}**" in note
    attrs = best.user_attrs
    assert f"### Best feasible: trial {best.number}" in note
    assert (
        f"p50 **{ms(attrs['latency_ms'])}** (**{speedup(attrs['speedup'], attrs['speedup_ci'])}**"
        in note
    )
    assert f"top-1 **{pct(attrs['accuracy'])}** (drop {points(attrs['accuracy_drop'])})" in note
    complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    pruned = len(study.get_trials(states=(TrialState.PRUNED,)))
    assert f"4/4 counted: {complete} complete, {pruned} pruned" in note
    assert re.search(r"\*Updated \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", note)


@pytest.mark.slow
def test_report(finished: Finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(finished.folder)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(finished.campaign), "--out", str(out)])
    assert result.exit_code == 0, result.output

    page = (out / "report.html").read_text()
    assert page.count("Plotly.newPlot(") >= 3
    assert "plotly.js v" in page  # the library itself, inlined
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched: opens offline
    for name in ("latency_accuracy.png", "pareto_front.png", "history.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_HEADER) and len(data) > 10_000, name
    print(f"\nlatency vs accuracy: {out / 'latency_accuracy.png'}")

    summary = json.loads((out / "summary.json").read_text())
    study = finished.study()
    base, best = baseline_trial(study), best_feasible(study)
    assert summary["baseline"]["latency_ms"] == base.user_attrs["latency_ms"]
    assert summary["baseline"]["accuracy"] == base.user_attrs["accuracy"]
    assert summary["best"]["trial"] == best.number
    assert summary["feasible_min_accuracy"] == pytest.approx(base.user_attrs["accuracy"] - 0.15)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert [r["trial"] for r in summary["complete_trials"]] == [t.number for t in complete]
    rows = summary["complete_trials"]
    fastest = min(rows, key=lambda r: (r["latency_ms"], -r["accuracy"]))
    most_accurate = max(rows, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    assert {fastest["trial"], most_accurate["trial"]} <= set(summary["pareto_front"])
    if summary["importances"] is None:
        assert summary["importances_skipped"]
        assert not (out / "param_importances.png").exists()
    else:
        assert set(summary["importances"]) == {"latency", "top-1"}
        assert (out / "param_importances.png").read_bytes().startswith(PNG_HEADER)


# --- without a campaign ----------------------------------------------------------------------


def _trial(number: int, latency: float, accuracy: float, **params: Any) -> dict[str, Any]:
    return {"trial": number, "latency_ms": latency, "accuracy": accuracy, "params": params}


def test_pareto_front_keeps_the_non_dominated() -> None:
    rows = [
        _trial(0, 1.0, 0.90),
        _trial(1, 0.5, 0.80),
        _trial(2, 0.7, 0.70),  # slower and less accurate than 1
        _trial(3, 0.5, 0.85),  # as fast as 1, more accurate
        _trial(4, 2.0, 0.90),  # as accurate as 0, slower
    ]
    assert [r["trial"] for r in pareto_front(rows)] == [3, 0]


def test_importances_need_two_trials_and_two_varying_params() -> None:
    study = optuna.create_study()
    found, why = importances(study, [])
    assert found is None and "at least 2 needed" in why
    distributions = {
        "a": optuna.distributions.FloatDistribution(0, 1),
        "b": optuna.distributions.CategoricalDistribution(["x", "y"]),
    }
    trials = [
        optuna.trial.create_trial(
            params={"a": a, "b": "x"},
            distributions=distributions,
            value=a,
            user_attrs={"latency_ms": a, "accuracy": 1 - a},
        )
        for a in (0.1, 0.5, 0.9)
    ]
    found, why = importances(study, trials)
    assert found is None and why.startswith("1 parameter(s) vary")


def test_a_note_that_cannot_be_written_does_not_stop_the_campaign(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = load_campaign(write_campaign(tmp_path))

    class Broken:
        def get_trials(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("database gone")

    with caplog.at_level(logging.WARNING, logger="vitopt.study_note"):
        write_note(Broken(), campaign)  # type: ignore[arg-type]
    assert "could not write the study note: database gone" in caplog.text


def test_note_before_the_baseline_finished(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path, **{"objective.mode": "pareto"}))
    study = optuna.create_study(directions=["minimize", "maximize"])
    note = render_note(digest(study, campaign))
    assert "not measured yet" in note and "none yet" in note
    assert "Pareto front of p50 latency (min) and top-1 (max)" in note
    assert "0/5 counted" in note


def _synthetic_pareto_study(**extra: str) -> optuna.Study:
    """A finished pareto-mode study as the driver records one: a baseline and three
    candidates, one of them over the accuracy budget (0.15); ``extra`` user attributes on
    every trial."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    distributions = {
        "prune.ratio": optuna.distributions.FloatDistribution(0.4, 0.7),
        "quantize.precision": optuna.distributions.CategoricalDistribution(["fp32", "int8"]),
    }
    common = {"device": "cpu", "device_type": "cpu", "backend": "ort", "backend_version": "ort 1"}
    common.update(extra)
    study.add_trial(
        optuna.trial.create_trial(
            values=[1.0, 0.9],
            user_attrs={**common, "baseline": True, "latency_ms": 1.0, "accuracy": 0.9,
                        "speedup": 1.0, "accuracy_drop": 0.0, "feasible": True},
        )
    )  # fmt: skip
    for latency, accuracy, ratio, precision in (
        (0.5, 0.85, 0.5, "int8"),
        (0.4, 0.70, 0.7, "int8"),  # infeasible: drop 0.20
        (0.8, 0.88, 0.4, "fp32"),
    ):
        study.add_trial(
            optuna.trial.create_trial(
                values=[latency, accuracy],
                params={"prune.ratio": ratio, "quantize.precision": precision},
                distributions=distributions,
                user_attrs={
                    **common,
                    "latency_ms": latency,
                    "accuracy": accuracy,
                    "speedup": 1.0 / latency,
                    "accuracy_drop": 0.9 - accuracy,
                    "feasible": 0.9 - accuracy <= 0.15,
                },
            )
        )
    return study


def test_report_in_pareto_mode(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path, **{"objective.mode": "pareto"}))
    data = write_report(_synthetic_pareto_study(), campaign, tmp_path / "report")
    assert data["objectives"] == ["p50 latency (ms)", "top-1"]
    assert data["pareto_front"] == [2, 1, 3, 0]  # every trial trades latency for top-1
    assert data["best"]["trial"] == 1  # the infeasible trial 2 is faster
    assert [s["best_feasible_ms"] for s in data["history"]] == [1.0, 0.5, 0.5, 0.5]
    assert data["importances"] is not None and set(data["importances"]["latency"]) == {
        "prune.ratio",
        "quantize.precision",
    }
    for name in (*data["png"].values(), "report.html", "summary.json"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
    assert len(data["png"]) == 4


def test_a_segmentation_pareto_study_is_labelled_by_its_metric(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path, **{"objective.mode": "pareto"}))
    study = _synthetic_pareto_study(accuracy_metric="mIoU")
    data = write_report(study, campaign, tmp_path / "report")
    assert data["objectives"] == ["p50 latency (ms)", "mIoU"]
    assert set(data["importances"]) == {"latency", "mIoU"}
    note = render_note(digest(study, campaign))
    assert "Pareto front of p50 latency (min) and mIoU (max)" in note
    name_objectives(study, campaign, "mIoU")
    assert study.metric_names == ["p50 latency (ms)", "mIoU"]


def test_report_needs_a_baseline(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path))
    with pytest.raises(ReportError, match="no finished baseline yet"):
        write_report(optuna.create_study(), campaign, tmp_path / "report")
