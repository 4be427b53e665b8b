"""A prepared dataset in collated batches, for every pass hftl makes outside the Trainer: prediction, evaluation
reports, the feature and teacher caches, the Fisher of EWC, the linear probe of preset auto."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    indices: list[int]  # the rows' positions in the dataset
    rows: list[dict]  # the rows as the dataset gives them (whole: collators that pop keys get copies)
    inputs: dict  # the collated batch without its labels, on the device when one was given
    labels: Any  # the collated labels, or None


def batches(dataset, collate, batch_size: int, device=None, shortest_first: bool = False) -> Iterator[Batch]:
    """The dataset in batches of `batch_size`, each read in one go (one arrow read and transform, not a row at a
    time). `shortest_first`: token inputs sorted by length, so batches carry little padding (for passes that store
    results by index)."""
    order = list(range(len(dataset)))
    if shortest_first and "input_ids" in dataset.column_names:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        order.sort(key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        columns = dataset[indices]
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        inputs = dict(collate([dict(r) for r in rows]))
        labels = inputs.pop("labels", None)
        if device is not None:
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        yield Batch(indices, rows, inputs, labels)
