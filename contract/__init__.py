"""The model folder contract, as code: the card (typed, validated) and the folder rules.

Imported by both `training/` (which writes model folders) and `service/` (which reads them);
it imports neither torch nor bentoml. docs/model-card.md explains it, docs/card.schema.json
is its JSON Schema (generated: `python -m contract.schema`).
"""
from .card import (DIRECTION_ROLES, ENDPOINTS, NAME_PATTERN, SCHEMA_VERSION, Card, FileEntry, GraphIO, ImageInput,
                   ImageOutput, Metrics, Provenance, RoleIO, SourceFile, TensorSpec, Tiling, Training, Variant)
from .typed import CardError, CardUnreadable

__all__ = ["Card", "CardError", "CardUnreadable", "DIRECTION_ROLES", "ENDPOINTS", "FileEntry", "GraphIO", "ImageInput", "ImageOutput",
           "Metrics", "NAME_PATTERN", "Provenance", "RoleIO", "SourceFile", "SCHEMA_VERSION", "TensorSpec", "Tiling", "Training", "Variant"]
