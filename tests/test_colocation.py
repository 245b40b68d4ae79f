"""Trials pause their steps while a co-located agent times: the paced loader every technique
iterates holds the host's lock from one batch to the next, nested steps share one hold, and the
lock is the host's, shared by every campaign's embedded agent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign_helpers import write_campaign
from rich.console import Console

from jetson_agent.quiet import DeviceLock
from optimizer.campaign.driver import agent_endpoint
from optimizer.config import load_campaign
from optimizer.device import colocation


@pytest.fixture()
def shared(tmp_path: Path) -> Iterator[Path]:
    colocation.share_device(tmp_path)
    yield tmp_path
    colocation.share_device(None)


def _measures_within(folder: Path, timeout_s: float) -> bool:
    """Whether an agent's job (another holder of the lock) gets the device within the time."""
    got = threading.Event()

    def measure() -> None:
        agent = DeviceLock(str(folder))
        with agent.measuring():
            got.set()
        agent.close()

    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    done = got.wait(timeout_s)
    if done:
        thread.join(5)
    return done  # else it measures once the step releases the device, and ends


def test_a_batch_is_held_until_the_next_is_asked_for(shared: Path) -> None:
    loader = colocation.PacedLoader([1, 2, 3])
    assert len(loader) == 3
    seen = []
    for batch in loader:
        # Mid-step: the agent must wait (here: give up after a moment).
        assert not _measures_within(shared, 0.3)
        seen.append(batch)
    assert seen == [1, 2, 3]
    assert _measures_within(shared, 5)  # the loop is over: the device is free


def test_breaking_out_of_the_loop_releases_the_device(shared: Path) -> None:
    for _batch in colocation.PacedLoader(range(10)):
        break
    assert _measures_within(shared, 5)


def test_a_step_inside_a_step_holds_one_lock(shared: Path) -> None:
    with colocation.step():
        for _batch in colocation.PacedLoader([1, 2]):
            pass
        # The inner steps ended; the outer one still holds the device.
        assert not _measures_within(shared, 0.3)
    assert _measures_within(shared, 5)


def test_without_a_co_located_agent_nothing_waits(tmp_path: Path) -> None:
    colocation.share_device(tmp_path / "not-on-this-host")
    assert list(colocation.PacedLoader([1, 2])) == [1, 2]
    with colocation.step():
        pass


def test_two_campaigns_on_one_host_share_one_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each campaign's embedded agent holds the host's lock, not its own: a trial of campaign
    A mid-step holds off a job of campaign B's agent."""
    monkeypatch.chdir(tmp_path)  # the agents' caches go under runs/<name>/
    campaigns = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        campaigns.append(load_campaign(write_campaign(tmp_path / name, name=name)))
    console = Console(quiet=True)
    with agent_endpoint(campaigns[0], console) as a, agent_endpoint(campaigns[1], console) as b:
        assert a.urls != b.urls
        assert a.quiet_lock == b.quiet_lock == colocation.host_lock_folder()
        colocation.share_device(a.quiet_lock)
        try:
            with colocation.step():
                assert not _measures_within(b.quiet_lock, 0.3)
            assert _measures_within(b.quiet_lock, 5)
        finally:
            colocation.share_device(None)
