"""The one exception a data module raises for data it cannot use."""


class DatasetError(RuntimeError):
    """Missing, empty or malformed dataset; the message names what was expected and the fix."""
