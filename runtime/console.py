"""What every command line shares: messages through stdlib logging, set up once per command line,
and bad input ending in one clear line, not a traceback.

Messages go to the `profiler` logger: `say` for what a command reports as it goes, `warn` for what
the user should act on. Each CLI's typer callback calls `setup_logging` once (plain lines on
stderr, so a batch log greps the same as a terminal); library callers get the same handler on first
use, or configure the `profiler` logger themselves."""
from __future__ import annotations

import errno
import functools
import logging
import sys

import typer

from runtime.errors import UserError

LOGGER = "profiler"
SCHEDULER_HELP = ("dask.distributed scheduler address, e.g. tcp://HOST:8786 (default: dask's local threads); "
                  "its workers must reach the store and any run folder at the same path or URL")

ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (a test runner or a typer CliRunner swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """The `profiler` logger with one plain stderr handler; calling it again changes only the level."""
    log = logging.getLogger(LOGGER)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)
    return log


def _logger() -> logging.Logger:
    log = logging.getLogger(LOGGER)
    return log if log.handlers else setup_logging()


def say(message: str) -> None:
    _logger().info(message)


def warn(message: str) -> None:
    _logger().warning(message)


def clean_errors(fn):
    """Run a command; a user error prints 'error: …' on stderr and exits with status 2.

    User errors are the project's own (`UserError` and its kinds: store, labels, encoder), and
    operating-system errors about a named path or about the machine's storage (disk full, quota,
    permission denied, read-only file system), which the user has to fix, not the code. Any other
    exception is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.filename is None and e.errno not in ENVIRONMENT_ERRNOS:
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper
