"""The one error type a person sees.

A `GptkitError` is a user mistake (bad path, bad config, corrupt file): `cli.main` prints it as
`gptkit: error: <message>` and exits 2 with no traceback. Any other exception is a bug and keeps
its traceback. This leaf module imports nothing, so every layer may raise it.
"""


class GptkitError(Exception):
    """A user-facing error: what went wrong, where, and how to fix it."""
