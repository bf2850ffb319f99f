"""dlrun's exceptions: what a user can cause, each with a message that says what to do."""


class DlrunError(Exception):
    """Base class of every error dlrun raises on purpose."""


class ShapeError(DlrunError, ValueError):
    """An array's shape does not fit the model, layer or op it was given to."""


class ConfigError(DlrunError, ValueError):
    """An unknown name (loss, optimizer, activation...) or an invalid setting."""


class DataError(DlrunError, ValueError):
    """A dataset or an array of samples/labels is missing, malformed or out of range."""


class ModelFileError(DlrunError, ValueError):
    """A path that should hold a saved dlrun model or checkpoint does not."""


class ClusterError(DlrunError, RuntimeError):
    """Distributed training cannot go on (no Ray, lost workers, poisoned rounds)."""
