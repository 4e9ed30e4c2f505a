"""One error type for everything a user can get wrong, raised where input enters.

The numerical core assumes valid inputs; the boundary (CLI, files, run directories) validates
and raises one of these with a message that names the problem *and* the fix. Command-line
entry points turn them into one line on stderr: exit status 2 for usage errors, 1 otherwise.
"""


class ScalelabError(Exception):
    """A runtime problem the user can fix (missing data, bad run directory, ...): exit 1."""

    exit_code = 1


class UsageError(ScalelabError):
    """The command was called wrongly (bad flag value, conflicting flags): exit 2."""

    exit_code = 2


class DataError(ScalelabError):
    """A dataset is missing, truncated, corrupted or not what it claims to be: exit 1."""
