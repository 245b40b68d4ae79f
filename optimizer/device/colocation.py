"""Trials that share a host with the campaign's embedded agent pause while it times.

The agent holds the host's measurement lock (``jetson_agent/quiet.py``) through each job's run
phase; a trial on the same host takes it shared for each short step of compute (a training
batch, the prune stage, an export with its quantization, an evaluation), so no step runs while
a job times and a job waits at most for the steps under way. Training batches are paced by the
loader techniques iterate (:class:`PacedLoader`, ``ctx.train_loader``), so a plugin's own training
loop pauses too without knowing it. A trial process is told the lock's folder once
(:func:`share_device`); on a host without that folder (another Ray node) it does nothing.

The lock belongs to the host, not to a campaign (:func:`host_lock_folder`): two campaigns run
side by side on one machine pause each other's trials while either one's agent times, and
their agents take turns.
"""

from __future__ import annotations

import contextlib
import getpass
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jetson_agent.quiet import DeviceLock

_lock: DeviceLock | None = None


def host_lock_folder() -> Path:
    """This host's measurement-lock folder, shared by every campaign its user runs here."""
    return Path(tempfile.gettempdir()) / f"vitopt-quiet-{getpass.getuser()}"


def share_device(folder: Path | None) -> None:
    """Pause this process's steps while the agent whose lock lives in ``folder`` times; None
    (a remote agent), or a folder this host lacks, turns pausing off."""
    global _lock
    if _lock is not None:
        _lock.close()
    _lock = DeviceLock(str(folder)) if folder is not None and folder.is_dir() else None


@contextlib.contextmanager
def step() -> Iterator[None]:
    """One step of compute that must not overlap a measurement on this host."""
    if _lock is None:
        yield
        return
    with _lock.working():
        yield


class PacedLoader:
    """``loader`` with each batch handed out inside a :func:`step`, held until the next batch
    is asked for or the loop ends (or breaks): the training step between two batches is the
    step. ``len()`` and the loader's attributes pass through."""

    def __init__(self, loader: Iterable[Any]):
        self._loader = loader

    def __len__(self) -> int:
        return len(self._loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self._loader)
        while True:
            with step():
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                yield batch
