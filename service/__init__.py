"""ganforge serving: a BentoML service over onnxruntime (see service/service.py).

No torch here, ever: the serving container has none.
"""
