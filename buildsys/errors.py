"""Errors a user can act on. Each one prints as one paragraph, never a traceback."""
from __future__ import annotations


class BBError(Exception):
    """An error caused by input or environment, reported without a traceback."""

    exit_code = 1

    # `where`: a lang.model.Location, or a path in words
    def __init__(self, message: str, *, where=None, hint: str = "", detail: str = ""):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        self.detail = detail

    def render(self) -> str:
        head = f"{self.where}: " if self.where else ""
        text = f"bb: error: {head}{self.message}"
        if self.hint:
            text += f" {self.hint}"
        if self.detail:
            text += "\n" + self.detail
        return text


class BatchfileError(BBError):
    """The Batchfile is malformed or inconsistent (exit code 2, as Make)."""

    exit_code = 2


class UsageError(BBError):
    """The command line asks for something that cannot be done (exit 2, as Make)."""

    exit_code = 2


class BuildFailed(BBError):
    exit_code = 1


class Interrupted(BBError):
    """Stopped by a signal: exit 128 + its number, as shells report it."""

    def __init__(self, message: str, *, signal: int = 2, **kw):
        super().__init__(message, **kw)
        self.exit_code = 128 + signal


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (CI cancelling, `timeout`, `docker stop`, a closed
    terminal): handled exactly like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
