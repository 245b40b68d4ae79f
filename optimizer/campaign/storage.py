"""The campaign's Optuna storage, made to ride out a database that is briefly unavailable.

Why: the driver is the only writer of the study, and a campaign runs for hours. A PostgreSQL
server that restarts (an upgrade, a failover) or an SQLite file that a dashboard holds locked
must not end the campaign and lose the trials in flight: every storage call is retried with
exponential backoff (0.2 s, doubling, at most 5 s apart) for up to `retry_s` seconds in total,
and only then fails, with StorageUnavailable, naming the database and the last error. Opening
the storage is retried the same way, so a campaign started while the database is still coming
up waits for it.

Transient errors are SQLAlchemy's OperationalError (connection refused or cut, server shutting
down, SQLite's "database is locked", deadlocks), any DBAPIError that invalidated its connection,
and a PendingRollbackError (a session used again after its connection broke mid-transaction,
which the next attempt's fresh session does not inherit), whether raised directly or wrapped by
Optuna in a StorageInternalError ("An exception is raised during the commit", whatever broke).
One function, _transient, walks that chain. Everything else, including a StorageInternalError
caused by bad data, passes through unchanged at once: KeyError for a missing study or trial,
ValueError, DuplicatedStudyError, UpdateFinishedTrialError.

How long one attempt may block: SQLite waits for a lock itself (its busy timeout), and libpq
for a server that does not answer a connection (connect_timeout, otherwise unbounded), each for
a quarter of `retry_s` and at most 5 s; so a dashboard's long read is simply waited for, and a
call gives up within `retry_s` plus one attempt. Connections to other databases are checked
before use (pool_pre_ping), so those broken by a restart are replaced instead of failing.

Optuna's cache (_CachedStorage) stays in the chain, under the retries: the driver re-reads all
trials often, and the cache turns that into reading only the unfinished and new ones. A failed
call leaves the cache as it was, since the cache is updated only after the database answered.

A write whose commit succeeded but whose acknowledgement was lost (the connection broke in
between) is retried. Attribute writes, parameters and intermediate values are idempotent; a
repeated finishing state change (tell) finds the trial already in that state, which counts as
done. Caveat: a repeated create_new_trial leaves an extra trial RUNNING that nothing runs,
which the next `vitopt run` fails as interrupted, like the trials of a driver that died.
"""

from __future__ import annotations

import abc
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage
from optuna.trial import TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, PendingRollbackError

_log = logging.getLogger("vitopt.storage")
_T = TypeVar("_T")
_FIRST_DELAY_S, _MAX_DELAY_S = 0.2, 5.0
_MAX_ATTEMPT_S = 5.0


class StorageUnavailable(Exception):
    """The database did not answer within the retry budget, or cannot be reached at all."""


def _shown(url: str) -> str:
    """The URL as it may appear in messages and logs: any password masked."""
    return make_url(url).render_as_string(hide_password=True)


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps, outermost first: each explicit cause (Optuna's
    StorageInternalError and SQLAlchemy's DBAPIError name theirs), and for a PendingRollbackError
    the error it was raised while handling (the connection's own failure)."""
    chain = [error]
    while True:
        last = chain[-1]
        inner = last.__cause__
        if inner is None and isinstance(last, PendingRollbackError):
            inner = last.__context__
        if inner is None or inner in chain:
            return chain
        chain.append(inner)


def _transient(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    return any(
        isinstance(cause, (OperationalError, PendingRollbackError, *also))
        or (isinstance(cause, DBAPIError) and cause.connection_invalidated)
        for cause in _chain(error)
    )


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause: the driver's own words, without SQLAlchemy's
    statement and background link or Optuna's generic wrapper message."""
    error = _chain(error)[-1]
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _retry(
    call: Callable[[], _T], url: str, retry_s: float, also: tuple[type[BaseException], ...] = ()
) -> _T:
    deadline = time.monotonic() + retry_s
    delay, tries = _FIRST_DELAY_S, 0
    while True:
        tries += 1
        try:
            result = call()
        except Exception as error:
            if not _transient(error, also):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(
                    f"storage {_shown(url)} did not answer for {retry_s:g} s "
                    f"({tries} {'try' if tries == 1 else 'tries'}): {_reason(error)}"
                ) from error
            if tries == 1:
                _log.warning(
                    "storage %s did not answer (%s); retrying for up to %g s",
                    _shown(url),
                    _reason(error),
                    retry_s,
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_DELAY_S)
        else:
            if tries > 1:
                _log.warning("storage %s answered again after %d tries", _shown(url), tries)
            return result


def _retried(name: str) -> Callable[..., Any]:
    """The method `name` of the wrapped storage, retried. Named and documented as BaseStorage's
    (not marked abstract: abc.update_abstractmethods then sees it implemented)."""

    def method(self: _RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self._storage, name)
        return _retry(lambda: bound(*args, **kwargs), self._url, self._retry_s)

    return functools.update_wrapper(method, getattr(BaseStorage, name), updated=())


def _delegate_every_method(cls: type[_RetryingStorage]) -> type[_RetryingStorage]:
    """Every public BaseStorage method, abstract or not: a default implementation left in place
    would bypass the wrapped storage's own (the cache's get_best_trial, say), and a method a
    newer Optuna adds is covered without a change here."""
    for name, member in vars(BaseStorage).items():
        if callable(member) and not name.startswith("_") and name not in vars(cls):
            setattr(cls, name, _retried(name))
    return abc.update_abstractmethods(cls)


@_delegate_every_method
class _RetryingStorage(BaseStorage):
    def __init__(self, storage: BaseStorage, url: str, retry_s: float) -> None:
        self._storage, self._url, self._retry_s = storage, url, retry_s

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Retried like the rest, except that a retry finding the trial already in ``state``
        means the lost attempt had committed: done, not an error."""
        retrying = False

        def attempt() -> bool:
            nonlocal retrying
            try:
                return self._storage.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if retrying and self._storage.get_trial(trial_id).state == state:
                    return True
                raise
            finally:
                retrying = True

        return _retry(attempt, self._url, self._retry_s)


def _attempt_s(retry_s: float) -> float:
    return min(retry_s / 4, _MAX_ATTEMPT_S)


def _engine_kwargs(parsed: URL, retry_s: float) -> dict[str, Any]:
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": _attempt_s(retry_s)}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    libpq = parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
        "psycopg",
        "psycopg2",
    )
    if libpq and "connect_timeout" not in parsed.query:
        # libpq's unit is whole seconds, and it takes less than 2 as 2.
        kwargs["connect_args"] = {"connect_timeout": max(2, math.ceil(_attempt_s(retry_s)))}
    return kwargs


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def open_storage(url: str, retry_s: float) -> BaseStorage:
    """The Optuna storage at `url` (any RDB URL; an SQLite file's folder is created), every
    call retried for up to `retry_s` seconds on transient database errors.

    Raises StorageUnavailable when the database does not answer within `retry_s`, or at once
    when the URL's database driver is not installed."""
    parsed, database = make_url(url), sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = _engine_kwargs(parsed, retry_s)
    try:
        # IntegrityError: another process (a dashboard, a status command) created the tables
        # at the same moment; the next try finds them.
        cached = _retry(
            lambda: _CachedStorage(RDBStorage(url, engine_kwargs=engine_kwargs)),
            url,
            retry_s,
            also=(IntegrityError,),
        )
    except ImportError as exc:
        missing = exc.__cause__ or exc
        raise StorageUnavailable(
            f"storage {_shown(url)} cannot be opened: its database driver is not installed "
            f"({missing}); a bare postgresql:// URL uses psycopg: pip install 'psycopg[binary]'"
        ) from exc
    return _RetryingStorage(cached, url, retry_s)
