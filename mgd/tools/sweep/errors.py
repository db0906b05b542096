"""The sweep's one error type: a problem with the user's input, reported as one line with exit code 2."""

__all__ = ["SweepError"]


class SweepError(Exception):
    """Bad input to a sweep (its space, its command, its storage, its folder): one line, exit 2, no traceback.
    Input is checked before the study is touched; a run that cannot be started at all stops the sweep with one
    too."""
