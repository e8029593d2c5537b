"""The launcher's one error type, and the exit statuses its commands return."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130: Ctrl-C, as shells report it


class LauncherError(Exception):
    """A refusal or a failure the launcher explains; the message says what is wrong and what to do.

    ``status`` is the exit status it ends a command with: EXIT_INPUT (bad input: nothing was done that needs
    undoing) unless the launcher says EXIT_FAILED (a failure of AWS, Docker or a job) or EXIT_INTERRUPTED (Ctrl-C).
    """

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status
