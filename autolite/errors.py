"""Project exceptions: each carries a one-line message that says what is wrong and what to do.

The CLI prints ``str(error)`` without a traceback (unless ``--debug``); library users catch
``AutoliteError``.
"""


class AutoliteError(Exception):
    """Base class for every user-facing error autolite raises."""


class ModelLoadError(AutoliteError):
    """A model path, file or built-in name could not be loaded."""


class UnsupportedArchitectureError(AutoliteError):
    """The model's architecture has no autolite family module."""


class CorruptWeightsError(ModelLoadError):
    """A weights file is truncated, corrupt or in an unsafe format."""


class DataError(AutoliteError):
    """A data file is missing, empty or lacks the expected columns."""


class RecipeError(AutoliteError):
    """A recipe or pass configuration is invalid."""


class BackendUnavailableError(AutoliteError):
    """A requested precision or backend is not available on this machine."""


class NumericsError(AutoliteError):
    """A model produced NaN/inf or a result failed its validation threshold."""


class ArgumentError(AutoliteError):
    """An API argument has the wrong type or an out-of-range value (e.g. ``None`` for a model)."""


class UnsupportedExportError(AutoliteError):
    """The model, its precision or its modules cannot be written in the requested format."""
