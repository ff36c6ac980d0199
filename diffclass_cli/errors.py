"""The one exception type for mistakes a user can make; the CLI turns it into exit code 1."""


class DiffclassError(Exception):
    """A user-caused error with a message that says what to fix."""
