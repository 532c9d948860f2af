"""The project's one user-error type; every command line prints it as one line (runtime.console)."""
from __future__ import annotations


class UserError(ValueError):
    """Input or a request the command cannot use (a bad option, a missing file, a refused target).

    The command line prints its message as one `error:` line and exits with status 2; any other
    exception is a bug and keeps its traceback. Kinds: cache.store.StoreError,
    cache.labels.LabelError and EncoderLoadError below."""


class EncoderLoadError(UserError):
    """Weights that cannot be loaded (a missing or foreign file, a shape that does not fit)."""
