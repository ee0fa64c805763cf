"""Exceptions that describe a user's mistake (bad file, bad option) rather than a bug.

The CLI prints them as one line, ``cordfuse: error: <message>``, never as a traceback.
"""


class CordfuseError(Exception):
    """A problem with the user's input: the message names the file and the reason."""
