"""User-facing errors. Anything raised as ``TaborError`` ends a command with exit 2 and one line."""


class TaborError(Exception):
    """A problem with the user's input (model, data, options). The message is shown as is."""

    exit_code = 2


class ModelLoadError(TaborError):
    """The model file is missing, corrupt, or not an image classifier."""


class UnsafeModelError(ModelLoadError):
    """The model would execute code stored in the file (Lambda bytecode, custom objects)."""


class DataError(TaborError):
    """The clean data is missing, unreadable, or does not fit the model."""
