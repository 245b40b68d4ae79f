"""``vitopt`` with its database connection cut inside a chosen storage call: the deterministic
outage of the PostgreSQL restart test.

    python storage_cut.py METHOD N HANDSHAKE_DIR -- VITOPT_ARGS...

In the N-th call of Optuna's ``RDBStorage.METHOD``, right after its first SQL statement ran (so
the transaction is open, the statement's answer read, nothing committed), the driver writes
``HANDSHAKE_DIR/paused`` and waits for the test to stop the server and write
``HANDSHAKE_DIR/stopped``; the call then goes on against a server that is gone, as when a
database restarts in the middle of a transaction. What the driver does next is its own code.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from optuna.storages import RDBStorage
from sqlalchemy import event

HANDSHAKE_WAIT_S = 300


def _cut_inside(method: str, nth: int, handshake: Path) -> None:
    original = getattr(RDBStorage, method)
    calls, armed = 0, False

    def pause(*_: object) -> None:  # SQLAlchemy's after_cursor_execute
        nonlocal armed
        if not armed:
            return
        armed = False
        (handshake / "paused").touch()
        deadline = time.monotonic() + HANDSHAKE_WAIT_S
        while not (handshake / "stopped").exists():
            if time.monotonic() > deadline:
                raise SystemExit("storage_cut: the test never stopped the server")
            time.sleep(0.05)

    @functools.wraps(original)
    def counted(self: RDBStorage, *args: object, **kwargs: object) -> object:
        nonlocal calls, armed
        calls += 1
        if calls == nth:
            if not event.contains(self.engine, "after_cursor_execute", pause):
                event.listen(self.engine, "after_cursor_execute", pause)
            armed = True
        return original(self, *args, **kwargs)

    setattr(RDBStorage, method, counted)


if __name__ == "__main__":
    method, nth, handshake, separator, *vitopt_args = sys.argv[1:]
    assert separator == "--", __doc__
    _cut_inside(method, int(nth), Path(handshake))
    from optimizer.cli import main

    main(vitopt_args, prog_name="vitopt")
