"""A real, throwaway PostgreSQL server for tests: its own data folder and a free loopback port.

Tests of the storage need a database that can really go away and come back, which only a real
server gives. It is started with the distribution's own binaries (the Debian `postgresql`
package, which .ci/run installs); as root, they run as the `postgres` user, because PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

USER = "vitopt"
DATABASE = "vitopt"
MISSING = (
    "PostgreSQL server binaries not installed (apt-get install postgresql); .ci/run installs them"
)


def server_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: the newest Debian one, else PATH's."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One server: initialised and started on construction; stop() and start() keep its data
    folder and port, so a restart is the same database; close() removes everything."""

    def __init__(self, binaries: Path) -> None:
        self._bin = binaries
        # Not under pytest's tmp_path: that is private to the test user, and as root the server
        # runs as `postgres`, which must reach its folders.
        self._root = Path(tempfile.mkdtemp(prefix="vitopt-pg-"))
        self._data, self._sockets = self._root / "data", self._root / "sockets"
        self._log = self._root / "server.log"
        self._sockets.mkdir()
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root needs the `postgres` user to exist") from exc
            for path in (self._root, self._sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.running = False
        try:
            options = ["-A", "trust", "-U", USER, "--no-sync", "--locale=C", "-E", "UTF8"]
            self._run("initdb", "-D", str(self._data), *options)
            self.start()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_postgres, str(self._bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self._log.read_text() if self._log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        """Start (or restart) the server on the same data folder and port; returns when it
        accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self._sockets} -c fsync=off"
        log, data = str(self._log), str(self._data)
        self._run("pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", "60", "-o", options)
        self.running = True

    def stop(self) -> None:
        """Stop at once (`-m fast`: open sessions are cut, as in a database restart)."""
        self._run("pg_ctl", "stop", "-D", str(self._data), "-m", "fast", "-w", "-t", "60")
        self.running = False

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def postgres_fixture() -> Callable[..., Iterator[PostgresServer]]:
    """A pytest fixture giving each test a fresh server: `postgres = postgres_fixture()` in a
    test module. Without the binaries it skips, except on CI (the CI variable set), where they
    must have been installed."""

    @pytest.fixture()
    def postgres() -> Iterator[PostgresServer]:
        binaries = server_binaries()
        if binaries is None:
            if os.environ.get("CI"):
                pytest.fail(f"CI is set but {MISSING}", pytrace=False)
            pytest.skip(MISSING)
        with PostgresServer(binaries) as server:
            yield server

    return postgres
