"""The exception types for mistakes a user can make; the CLI turns them into exit code 1."""


class DiffclassError(Exception):
    """A user-caused error with a message that says what to fix."""

    resumable = False  # whether a partial output it leaves behind can be continued


class RunInterrupted(DiffclassError):
    """The run stopped before it finished (e.g. a worker was killed); `--resume` continues it."""

    resumable = True
