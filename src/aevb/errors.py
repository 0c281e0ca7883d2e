"""User-facing errors: one clear message, no traceback in the CLI."""


class AevbError(Exception):
    """A problem with the user's input, files or settings (not a bug in aevb).

    The CLI prints ``error: <message>`` and exits with status 2.
    """


class DataError(AevbError):
    """A dataset file is missing, corrupt, wrongly shaped or holds invalid values."""


class ConfigError(AevbError, ValueError):
    """An invalid setting (also a ``ValueError``, for code that calls the API directly)."""
