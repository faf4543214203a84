"""One exception type for every mistake a user can fix.

The CLI catches :class:`UserError`, prints its message on one line and exits with
``EXIT_USER_ERROR``; anything else is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input, a missing or mismatched artifact: the message names the fix."""
