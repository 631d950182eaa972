"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's config, data or environment, stated so they can fix it."""
