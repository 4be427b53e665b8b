"""Finished runs: reading a run directory back (load), using it (predict, evaluate), shipping it (export, onnx,
hub) and what a run leaves beside its weights (outputs, card).

Training writes its outputs through this package; nothing here imports the training flow (hftl/training/).
"""
