"""The one exception type tagtune raises for problems a user can fix (bad files, bad options)."""


class TagtuneError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero.

    Messages name the file (and line, where there is one) and say what is wrong.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``tagtune train``, handled as Ctrl-C is (the run stops where it is and stays
    resumable); the CLI exits with status 143 instead of 130."""
