"""The one exception type that the CLI turns into a single line and exit code 2."""


class DormantError(ValueError):
    """Bad input from the user: the message names what is wrong and how to fix it."""
