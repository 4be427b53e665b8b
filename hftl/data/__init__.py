"""The recipe's data: sources loaded (loading.py), split with labels encoded (splits.py), batched (batches.py)."""

from hftl.data.batches import Batch, batches
from hftl.data.loading import load_raw
from hftl.data.splits import Splits, holdout, join_rows, load_splits

__all__ = ["Batch", "Splits", "batches", "holdout", "join_rows", "load_raw", "load_splits"]
