"""What every command line shares: bad input ends in one clear line, not a traceback."""
from __future__ import annotations

import errno
import functools
import sys

import typer

from cache.store import UserError

SCHEDULER_HELP = ("dask.distributed scheduler address, e.g. tcp://HOST:8786 (default: dask's local threads); "
                  "its workers must reach the store and any run folder at the same path or URL")

ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


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


def say(message: str) -> None:
    typer.echo(message, err=True)
    sys.stderr.flush()
