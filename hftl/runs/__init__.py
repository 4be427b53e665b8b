"""Finished runs: reading a run directory back, its outputs (metrics, curves, card), export and the Hub.

Training writes its outputs through this package; nothing here imports the training flow (pipeline,
trainer, strategy, cache, preflight).
"""
