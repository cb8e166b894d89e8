"""ONNX-only operations on published models: no torch, no HTTP.

rewrites (exact graph rewrites), optimize (apply them to a published model), fp16 / bf16 / quantize (the
reduced-precision variants and their gates, in one place), numerics (parity measurements between graphs),
metrics (the held-out figures' formulas), inputs (the feeds a variant is calibrated and checked on: a
dataset reader is passed in by the caller, since reading datasets is training's business).
training/ imports this package (export writes the fp16 variant and the optimised graph; its CLI runs these
verbs with its dataset reader); the service never needs it. import-linter checks the layers.
"""
