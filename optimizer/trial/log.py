"""Each trial's own log: what its techniques said (``ctx.log``) and how it ended, kept in its
folder as ``trial.log``, uploaded with its artifacts (the dashboard lists it), and its last lines
recorded in the study (``vitopt status --trial N`` prints them), so a user sees why a trial
failed without opening anything else."""

from __future__ import annotations

import collections
import logging
import uuid
from pathlib import Path
from types import TracebackType

LOG_NAME = "trial.log"
LOG_TAIL_ATTR = "log_tail"  # the user attribute with the log's last lines
TAIL_LINES = 30
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Tail(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(self.format(record).splitlines())


class TrialLog:
    """A logger writing to ``work_dir/trial.log`` and keeping the last lines, for one trial;
    a context manager that closes the file."""

    def __init__(self, work_dir: Path, number: int) -> None:
        self.path = work_dir / LOG_NAME
        # A name of its own: two trials in one process never share handlers.
        self.logger = logging.getLogger(f"vitopt.trial.{number}.{uuid.uuid4().hex[:8]}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        formatter = logging.Formatter(_FORMAT)
        self._file = logging.FileHandler(self.path, encoding="utf-8")
        self._tail = _Tail()
        for handler in (self._file, self._tail):
            handler.setFormatter(formatter)
            self.logger.addHandler(handler)

    @property
    def tail(self) -> list[str]:
        return list(self._tail.lines)

    def __enter__(self) -> TrialLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handler in (self._file, self._tail):
            self.logger.removeHandler(handler)
            handler.close()
