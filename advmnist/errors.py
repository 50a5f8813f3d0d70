"""The one error type the command line turns into a message and exit status 2."""


class InvalidInput(ValueError):
    """Bad input from the user (a value, a file, a folder): the message says what was expected."""
