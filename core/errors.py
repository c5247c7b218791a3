"""User-facing errors: the CLI prints the message (no traceback) and exits 2."""


class UserError(Exception):
    """Something the user can fix: a bad argument, a missing path, an unreachable id."""
