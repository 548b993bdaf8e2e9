"""The one exception type the CLI turns into a one-line message and exit code 2."""


class GraspError(Exception):
    """A problem the user can fix: the message names the bad value and the fix."""
