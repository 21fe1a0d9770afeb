"""Every error type of the package, in one place: each message is one line naming the file,
layer or option at fault and what would help, so a command reports it as it is
(:data:`EXPECTED`) and never as a traceback. Nothing here imports torch."""

from __future__ import annotations

from typing import Any


class ConversionError(ValueError):
    """The model cannot be converted (unsupported shape) or failed the exactness check."""


class ModelFileError(ValueError):
    """A file that is not a loadable fcn-cam model."""


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded or loaded."""


class NotAChainError(WeightsError):
    """A TorchScript archive that is not a chain of standard layers; ``archive`` is the loaded
    ScriptModule (its tensors still fit a named architecture, see :func:`fcn_cam.zoo.build`)."""

    archive: Any = None


class OutputError(OSError):
    """The output folder cannot be used (not writable, not a folder); one line."""


class AlreadyDone(FileExistsError):  # noqa: N818 - a state, not a failure
    """The record exists (maybe written meanwhile by another process) and ``overwrite`` is off."""


class NonFiniteError(ValueError):
    """The model produced NaN or infinite scores for this image."""


class ImageError(ValueError):
    """An input that is not a readable image; the message names the file."""


class RayRunError(RuntimeError):
    """The Ray run itself failed (cluster unreachable, an actor that cannot start, …)."""


class ExportError(ValueError):
    """The model cannot be exported, or the written graph disagrees with the module."""


class ReportError(ValueError):
    """The folder cannot be reported on (one line naming it)."""


class AnnotationError(ValueError):
    """A malformed or inconsistent annotation; the message names the file and the entry."""


#: The errors a command reports as one line (bad input, not a bug).
EXPECTED: tuple[type[Exception], ...] = (
    ConversionError, ModelFileError, WeightsError, OutputError, ImageError, RayRunError, ExportError,
    ReportError, AnnotationError, ValueError, FileExistsError,
)
