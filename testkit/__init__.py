"""What tests, bench, soak and docs scripts share to exercise the product, and the product never ships.

- fixtures.py  tiny real ONNX model folders (cards and graphs built with onnx.helper, no torch)
- tiny.py      a tiny run config per training family over generated datasets, and the tiny zoo export
- launcher.py  a real `bentoml serve` on a free loopback port, ready (tests, bench, soak, docs)
- media.py     small real test videos (constant / variable frame rate, AAC audio) and readers for them

The Bento (bentofile.yaml) includes service/, core/ and contract/ only, so none of this reaches an image.
"""
