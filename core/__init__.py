"""The pixels below both sides: torch-free and HTTP-free.

imaging (one decoder for every mode, colour, padding, encode), tiling, pipelines (translate / upscale /
generate with the caller's hooks), loading (one model from its card), backends and runtime (onnxruntime and
OpenVINO sessions, the backend and precision choice), cpu (CPU features), settings (what a deployment sets).
training/ and service/ both import this package; it imports neither (import-linter checks it).
"""
