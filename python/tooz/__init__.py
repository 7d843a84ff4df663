"""tooz: distributed coordination primitives (locks, groups, leaders) on a Rust core."""


class ToozError(Exception):
    """Base class of every tooz exception; ``cause`` is what provoked it, if anything."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause


class NotImplemented(NotImplementedError, ToozError):  # noqa: A001 - upstream's name
    """The backend does not offer this operation."""
