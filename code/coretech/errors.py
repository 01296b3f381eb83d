"""The one exception type users see: its message is a single line naming the file and the record."""


class CoreTechError(Exception):
    """A problem with the user's input, config or environment, reported as one line without a traceback.

    The CLI prints ``error: <message>`` and exits with status 2. Raise it (or a subclass) wherever
    the fix is on the user's side: a malformed record, a missing file, an unknown key, a missing
    optional dependency. Bugs stay ordinary exceptions so they keep their tracebacks.
    """


class StageFailed(CoreTechError):
    """A pipeline stage's process exited non-zero; the message names the stage, status and log."""
