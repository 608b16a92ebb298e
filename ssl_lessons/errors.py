"""The expected failures: each carries a message that says what to do. The command line prints it as one line
(`error: ...`) and exits with status 2; nothing else is caught, so a real bug still shows its traceback."""


class UserError(Exception):
    """A bad input or a state the user can fix (a setting, a path, a file, a run folder)."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work: unknown key, wrong type, out of range, or incompatible with another."""


class DataError(UserError, RuntimeError):
    """Images that cannot be found or read."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or run folder that cannot be used as asked: unreadable, another method's, another config."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the last checkpoint is intact."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds; a config and the recipes validate with it."""
    if not condition:
        raise ConfigError(message)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (torch's weights-only and decoder errors run to many lines), for a
    one-line message that names the cause."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def user_message(error: BaseException) -> str:
    """What the command line prints for an expected failure: its message, without the traceback that DataLoader
    workers append when they re-raise an error in the main process ("Caught DataError in DataLoader worker ...")."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]  # "ssl_lessons.errors.DataError: could not decode image ..."
        return last.split(": ", 1)[1] if ": " in last else last
    return text
