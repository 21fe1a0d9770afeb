"""The package's error types: each is a ``ValueError`` whose message is one line naming
the file or layer at fault and what would help."""

from __future__ import annotations


class ConversionError(ValueError):
    """The model cannot be converted (unsupported shape) or failed the exactness check."""


__all__ = ["ConversionError"]
