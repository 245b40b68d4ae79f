"""The resilient storage against real databases: an SQLite file locked by another connection,
and a real PostgreSQL server stopped and restarted under a live study."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.exceptions import (
    DuplicatedStudyError,
    StorageInternalError,
    UpdateFinishedTrialError,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState
from postgres_server import PostgresServer, free_port, postgres_fixture
from sqlalchemy.exc import DataError, OperationalError, PendingRollbackError

from optimizer.campaign.storage import StorageUnavailable, _RetryingStorage, open_storage
from optimizer.campaign.study import load_existing_study
from optimizer.config import Campaign

postgres = postgres_fixture()
# Slack for the last attempt (a quarter of retry_s at most) and a busy 2-core machine.
MARGIN_S = 3.0


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'study.db'}"


def _lock(sqlite_url: str) -> sqlite3.Connection:
    """An exclusive lock on the study file, held by another connection until it commits."""
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), check_same_thread=False)
    holder.isolation_level = None
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_every_storage_method_is_retried(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url, retry_s=1)
    base = optuna.storages.BaseStorage
    public = [n for n, m in vars(base).items() if callable(m) and not n.startswith("_")]
    assert "check_trial_is_updatable" in public and "get_n_trials" in public  # not abstract
    for name in public:
        assert getattr(type(storage), name) is not getattr(base, name), name
    assert Path(sqlite_url.removeprefix("sqlite:///")).parent.is_dir()


def test_sqlite_lock_is_waited_for(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # SQLite itself waits 1.5 s (a quarter of retry_s), then the retries take over.
    storage = open_storage(sqlite_url, retry_s=6)
    study_id = storage.create_new_study([StudyDirection.MINIMIZE], "s")
    holder = _lock(sqlite_url)
    threading.Timer(2.0, holder.execute, ["COMMIT"]).start()
    started = time.monotonic()
    storage.set_study_user_attr(study_id, "written", True)
    assert 1.5 < time.monotonic() - started < 6
    assert storage.get_study_user_attrs(study_id) == {"written": True}
    assert "database is locked" in caplog.text and "answered again after" in caplog.text
    holder.close()


def test_sqlite_lock_held_forever_fails_in_bounded_time(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url, retry_s=3)
    storage.create_new_study([StudyDirection.MINIMIZE], "s")
    holder = _lock(sqlite_url)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failure:
        storage.get_study_id_from_name("s")
    assert 3 <= time.monotonic() - started < 3 + MARGIN_S
    holder.close()
    message = str(failure.value)
    assert "\n" not in message
    assert sqlite_url in message and "did not answer for 3 s" in message
    assert message.endswith("database is locked")


def test_not_transient_errors_pass_through_at_once(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url, retry_s=30)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(trial, 1.0)
    running = study.ask()
    started = time.monotonic()
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("missing")
    with pytest.raises(DuplicatedStudyError):
        storage.create_new_study([StudyDirection.MINIMIZE], "s")
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(ValueError, match="Cannot set different distribution"):
        storage.set_trial_param(running._trial_id, "x", 0, CategoricalDistribution(["a"]))
    campaign = Campaign.model_validate(
        {
            "name": "absent",
            "model": {"name": "vit_tiny_patch16_224"},
            "objective": {"max_accuracy_drop": 0.01},
            "storage": sqlite_url,
        }
    )
    with pytest.raises(KeyError):
        load_existing_study(campaign)
    assert time.monotonic() - started < 5


def test_database_down_at_start() -> None:
    url = f"postgresql://vitopt@127.0.0.1:{free_port()}/vitopt"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"did not answer for 3 s .*Connection refused"):
        open_storage(url, retry_s=3)
    assert 3 <= time.monotonic() - started < 3 + MARGIN_S


def test_missing_driver_fails_at_once() -> None:
    with pytest.raises(StorageUnavailable, match=r"u:\*\*\*@.*driver is not installed.*pg8000"):
        open_storage("postgresql+pg8000://u:secret@127.0.0.1:1/x", retry_s=30)


def test_postgres_restart_is_ridden_out(postgres: PostgresServer) -> None:
    # Trust authentication ignores the password: it is there to be masked in messages.
    url = postgres.url.replace("vitopt@", "vitopt:secret@")
    patient, impatient = open_storage(url, retry_s=30), open_storage(url, retry_s=3)
    study = optuna.create_study(storage=patient, study_name="restart")
    first = study.ask()
    study.tell(first, 1.0)

    postgres.stop()
    restart = threading.Timer(3.0, postgres.start)
    restart.start()
    started = time.monotonic()
    trial = study.ask()
    study.tell(trial, 2.0)
    assert time.monotonic() - started >= 2.5
    restart.join()
    assert [t.value for t in study.get_trials()] == [1.0, 2.0]

    postgres.stop()
    # Optuna's cache is in the chain: a finished trial it holds needs no database.
    assert patient.get_trial(first._trial_id).value == 1.0
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failure:
        impatient.get_all_studies()
    assert 3 <= time.monotonic() - started < 3 + MARGIN_S
    message = str(failure.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith(f"storage postgresql://vitopt:***@127.0.0.1:{postgres.port}/vitopt")
    assert "did not answer for 3 s" in message and "Connection refused" in message


class _LostAcknowledgement(optuna.storages.RDBStorage):
    """SQLite storage whose first finishing write commits, then loses its answer, as when a
    connection breaks between the server's commit and the client reading it."""

    lost = False

    def set_trial_state_values(self, trial_id, state, values=None):  # type: ignore[override]
        done = super().set_trial_state_values(trial_id, state, values)
        if not self.lost:
            self.lost = True
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection reset"))
        return done


def test_a_tell_whose_answer_was_lost_is_not_an_error(sqlite_url: str) -> None:
    Path(sqlite_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    inner = _LostAcknowledgement(sqlite_url)
    storage = _RetryingStorage(inner, sqlite_url, retry_s=5)
    study = optuna.create_study(storage=storage, study_name="ack")
    trial = study.ask()
    study.tell(trial, 1.0)  # committed, answer lost, retried: finds it COMPLETE
    assert inner.lost
    assert study.trials[0].state == TrialState.COMPLETE
    other = study.ask()
    study.tell(other, state=TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):  # a real double tell is still refused
        storage.set_trial_state_values(other._trial_id, TrialState.COMPLETE, [2.0])


def _wrapped_by_optuna(error: Exception) -> StorageInternalError:
    """`error` as Optuna's _create_scoped_session raises it: StorageInternalError from it."""
    try:
        raise StorageInternalError("An exception is raised during the commit.") from error
    except StorageInternalError as wrapper:
        return wrapper


def _pending_rollback(cut: Exception) -> PendingRollbackError:
    """The PendingRollbackError SQLAlchemy raises for a session used again while handling a cut
    connection (its cause is implicit: __context__)."""
    try:
        try:
            raise cut
        except OperationalError:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back")  # noqa: B904 (as SQLAlchemy raises it)
    except PendingRollbackError as pending:
        return pending


_CUT = OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))
# Chains recorded from psycopg 3 under a PostgreSQL server restarted while threads read and write.
TRANSIENT = {
    "cut": _CUT,
    "cut, wrapped": _wrapped_by_optuna(_CUT),
    "pending rollback after a cut, wrapped": _wrapped_by_optuna(_pending_rollback(_CUT)),
}


class _Failing:
    """An inner storage whose get_all_studies raises `errors` in turn, then answers []."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    def get_all_studies(self) -> list[object]:
        if self.errors:
            raise self.errors.pop(0)
        return []


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_errors_are_retried_however_wrapped(error: Exception) -> None:
    storage = _RetryingStorage(_Failing(error), "sqlite:///s.db", retry_s=5)  # type: ignore[arg-type]
    assert storage.get_all_studies() == []
    storage = _RetryingStorage(_Failing(*[error] * 100), "sqlite:///s.db", retry_s=0.5)  # type: ignore[arg-type]
    with pytest.raises(StorageUnavailable, match=r"server closed the connection unexpectedly$"):
        storage.get_all_studies()


def test_bad_data_wrapped_by_optuna_is_not_retried() -> None:
    bad = _wrapped_by_optuna(DataError("INSERT", {}, ValueError("value too long")))
    storage = _RetryingStorage(_Failing(bad), "sqlite:///s.db", retry_s=30)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StorageInternalError):
        storage.get_all_studies()
    assert time.monotonic() - started < 1


def _open_at_once(url: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    open_storage(url, retry_s=10)


def test_processes_creating_one_new_study_file_at_once(tmp_path: Path) -> None:
    # A dashboard or 'vitopt status' opening the file while the driver creates it: whoever
    # loses the race to create the tables retries and finds them.
    context = multiprocessing.get_context("spawn")
    for attempt in range(2):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_at_once, args=(url, barrier)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
