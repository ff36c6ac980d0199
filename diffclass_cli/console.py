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


_forced_progress = False


def configure(quiet: bool, show_progress: bool = False) -> None:
    """Send diffclass logs to stderr; `quiet` keeps only warnings and errors; progress bars are
    drawn only on a terminal unless `show_progress`."""
    global _forced_progress
    _forced_progress = show_progress
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr: hidden when --quiet, and when stderr is not a terminal (a log file
    would fill with bars) unless --progress."""
    shown = log.isEnabledFor(logging.INFO) and (_forced_progress or sys.stderr.isatty())
    return tqdm(iterable, file=sys.stderr, disable=not shown, dynamic_ncols=True, **kwargs)
