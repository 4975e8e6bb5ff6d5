"""One error type for bad user input, and the CLI guard that turns it into one clear line.

Every check of user input (configs, flags, files, shards, schedules) raises `UsageError` with a message that
names the problem and the fix. Entry points wrap `main` in `exit_on_usage_error`, so users see one line
(`error: ...`) and exit status 2 instead of a traceback from deep inside.
"""
import functools
import sys


class UsageError(ValueError):
    """Bad input from the user: a message that names the problem and how to fix it."""


def exit_on_usage_error(main):
    """Decorator for CLI `main` functions: a UsageError becomes `error: <message>` on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
