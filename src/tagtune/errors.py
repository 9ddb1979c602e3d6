"""The one exception type tagtune raises for problems a user can fix (bad files, bad options), and
the one way to show another library's exception inside its one-line message."""

import re

_ERRNO = re.compile(r"\[Errno -?\d+\] [^\"'()\\]+")


class TagtuneError(Exception):
    """A problem the user can fix: a bad or missing file, a malformed record, an option out of range.

    tagtune raises it for every problem of that kind. The message is one line: it names the file
    (and the line, where there is one), says what is wrong and, where it can, what to do. The
    commands print it as ``tagtune: error: <message>`` and exit with status 1, without a
    traceback.

    Example:
        ```python
        import tagtune

        try:
            tagger = tagtune.Tagger.load("my-tagger")
        except tagtune.TagtuneError as e:
            print(e)  # e.g. "my-tagger: an unfinished training run (resume it with ...)"
        ```
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``tagtune train``, handled as Ctrl-C is (the run stops where it is and stays
    resumable); the CLI exits with status 143 instead of 130."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one short line; for a socket error, its errno and reason alone."""
    text = str(error).strip()
    errno = _ERRNO.search(text)
    text = errno.group(0) if errno else (text.splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
