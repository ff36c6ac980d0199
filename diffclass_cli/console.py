"""Everything that is not data goes to standard error: logs, warnings and progress bars."""

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("diffclass")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure(quiet: bool) -> None:
    """Send diffclass logs to stderr; `quiet` keeps only warnings and errors."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr, hidden when --quiet."""
    return tqdm(iterable, file=sys.stderr, disable=not log.isEnabledFor(logging.INFO),
                dynamic_ncols=True, **kwargs)
