"""What `python -m training import` refuses, each with a message fit for the command line."""
from __future__ import annotations


class ImportFailed(ValueError):
    """A weights file that cannot become a served model; the message says why."""


class NotACheckpoint(ImportFailed):
    """Missing, not a checkpoint (random bytes, text), truncated, or holding no tensors."""


class UnsafeCheckpoint(ImportFailed):
    """The pickle carries Python objects or code: refused by weights-only loading."""


class UnknownLayout(ImportFailed):
    """No known family matches the keys and shapes."""


class LayoutMismatch(ImportFailed):
    """The weights look like (or were forced to) a family but do not fit it."""


class Refused(ImportFailed):
    """A family that is recognised but not served (licence, square-only input, masked/face models)."""
