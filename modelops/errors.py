"""The error of a model operation that cannot go on (export's too: training.export re-exports it)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The export or model operation cannot go on; the message says why."""
