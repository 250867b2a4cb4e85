"""User-facing errors.

A `MonologueError` is a mistake in what the user gave us (a bad file, an unsupported op, a bad flag).
The CLI prints its message as one line and exits with `exit_code`; it never shows a traceback.
Anything else that escapes is a bug in Monologue and keeps its traceback.
"""


class MonologueError(Exception):
    """A user-facing error: one line that names the file, op or field at fault."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
