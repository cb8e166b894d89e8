"""Soak and fault runs against a real `bentoml serve` on loopback (issue 7): `python -m soak` / `make soak`."""
