"""The one error type for bad user input.

Anything the user can get wrong (a path, a number, a name) raises `UserError` with a message that fits on
one line; the CLI prints it as `longvideo: error: <message>` and exits with code 2, never a traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a one-line message, exit code 2 at the CLI.

    A ValueError, so library callers that already catch ValueError for bad arguments keep working.
    """
