"""Training recipes: one file per family, each a `Recipe` subclass (see base.py)."""
