"""Cached-feature extraction (`strategy.cache_features`).

When the whole backbone stays frozen and inputs are deterministic (no train-time augmentation), every
epoch recomputes the same backbone outputs. Here they are computed once (backbone in eval mode, as a
frozen backbone runs during training too) and the head trains on them through the same Trainer:

- transformers models: the backbone module's `forward` is replaced (on the instance) by a lookup
  keyed by an `hftl_index` column; the task model passes its extra kwargs to the backbone, so its own
  forward -- dropout, head, loss -- runs unchanged;
- timm models (TimmWrapper): `forward_features` becomes the identity and the cached features come
  in as `pixel_values`, so `forward_head` (pooling, dropout, classifier) runs unchanged.

The parameters are never touched: checkpoints and the saved model are the normal full model, and
`restore()` puts the real forward back. Same seed -> same data order -> the same head as without the cache.

The features also go to disk (hftl/training/feature_store.py), keyed by the backbone's weights and the exact inputs it
is fed: a later run of the same backbone on the same data (another head learning rate, seed, epochs) reads
them instead of running the backbone.
"""

from __future__ import annotations

import logging

import torch
from datasets import Dataset
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hftl.data import batches
from hftl.errors import HftlError
from hftl.hooks import find_backbone, unwrap
from hftl.model import pooling_of
from hftl.training import feature_store

logger = logging.getLogger(__name__)
INDEX = "hftl_index"


def why_not(model: nn.Module, plan, strategy, augment_on: bool) -> str | None:
    """The reason features cannot be cached for this run, or None."""
    if strategy.gradual_unfreezing is not None:
        return "strategy.gradual_unfreezing trains backbone layers later"
    lm, ts = plan.layer_map, plan.trainable
    if any(lm.depth[n] != lm.head_depth for n in ts.candidates):
        return "some backbone parameters train (only the head may train)"
    if augment_on:
        return "train-time augmentation is on (set data.augment: false)"
    task = unwrap(model)
    if task is not model:
        return "the model is wrapped (PEFT)"
    if getattr(task, "hftl_towers", None):
        return "the model's towers run side by side (a dual encoder): there is no one backbone to cache"
    if getattr(task, "hftl_parts", None):
        return "the language model reads the image features with the text (a vision-language model)"
    if not (hasattr(task, "timm_model") or _backbone(task) is not None):
        return f"{type(task).__name__} has no separate backbone module"
    return None


def _backbone(task: nn.Module) -> nn.Module | None:
    return find_backbone(task)[1]


class FeatureCache:
    """Computes the backbone outputs of train + eval once and serves them by example index."""

    def __init__(self, model: nn.Module, collator, batch_size: int = 64, persist: bool = True):
        self.task = unwrap(model)
        self.collator = collator
        self.batch_size = batch_size
        self.timm = hasattr(self.task, "timm_model")
        self.backbone = self.task.timm_model if self.timm else _backbone(self.task)
        self.store: dict[str, list[torch.Tensor]] = {}
        self.unread: set[str] = set()  # cached fields the task model never reads: a NaN stand-in, not padded rows
        self._patched = False
        self.hits = 0  # splits served from the on-disk feature cache
        self.model_name = getattr(getattr(self.task, "config", None), "_name_or_path", "") or type(self.task).__name__
        # the backbone's digest is taken when features are first computed, after anything that changes its
        # weights before training (contrastive body tuning, a feature's model)
        self.persist = persist and feature_store.root() is not None
        self.pooling = pooling_of(model)
        self.model_key = None

    def _inputs(self, dataset):
        """(indices, backbone inputs on the device, their labels) per batch; per-token labels lose the padding."""
        device = next(self.task.parameters()).device
        for b in batches(dataset, self.collator, self.batch_size, shortest_first=True):
            idx, labels = b.indices, b.labels.tolist()
            batch = {k: v.to(device) for k, v in b.inputs.items() if isinstance(v, torch.Tensor)}
            lengths = batch["attention_mask"].sum(1).tolist() if "attention_mask" in batch else None
            if lengths is not None and labels and isinstance(labels[0], list):
                labels = [row[: int(n)] for row, n in zip(labels, lengths)]
            yield idx, batch, labels, lengths

    @torch.no_grad()
    def _compute(self, dataset) -> tuple[int, list]:
        start = len(next(iter(self.store.values()), []))
        labels, key = [None] * len(dataset), None
        if self.persist and self.model_key is None:
            self.model_key = feature_store.model_digest(self.backbone, self.task, self.pooling)
        if self.model_key is not None:  # the on-disk entry for exactly these inputs to exactly this backbone
            digest = feature_store.InputDigest(self.model_key)
            for idx, batch, batch_labels, _ in self._inputs(dataset):
                digest.add(idx, batch)
                for i, label in zip(idx, batch_labels):
                    labels[i] = label
            key = digest.key()
            cached = feature_store.load(key)
            if cached is not None and all(len(rows) == len(dataset) for rows in cached.values()):
                logger.info("backbone features of %d examples read from the feature cache (%s)", len(dataset), key[:12])
                self.hits += 1
                for k, rows in cached.items():
                    self.store.setdefault(k, []).extend(rows)
                return start, labels
        was_training = self.backbone.training
        self.backbone.eval()
        rows_by_key = {}
        for idx, batch, batch_labels, lengths in self._inputs(dataset):
            for i, label in zip(idx, batch_labels):
                labels[i] = label
            if self.timm:
                feats = {"pixel_values": self.backbone.forward_features(batch["pixel_values"])}
            else:
                out = self.backbone(**batch, return_dict=True)
                feats = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
            for k, v in feats.items():
                rows = rows_by_key.setdefault(k, [None] * len(dataset))
                for j, i in enumerate(idx):
                    row = v[j]
                    if lengths is not None and row.dim() >= 2 and k != "pooler_output":
                        row = row[: int(lengths[j])]  # drop padding; re-padded per batch
                    rows[i] = row.detach().cpu()
        for k, rows in rows_by_key.items():
            self.store.setdefault(k, []).extend(rows)
        self.backbone.train(was_training)
        if key is not None:
            feature_store.save(key, rows_by_key, {"model": self.model_name, "examples": str(len(dataset))})
        return start, labels

    def datasets(self, train, evaluation) -> tuple[Dataset, Dataset]:
        """Cache both splits; return datasets of (hftl_index or cached pixel_values, labels)."""
        out = []
        for ds in (train, evaluation):
            start, labels = self._compute(ds)
            idx = list(range(start, start + len(labels)))
            out.append(Dataset.from_dict({INDEX: idx, "labels": labels}))
        logger.info("cached backbone features of %d examples", sum(len(d) for d in out))
        return out[0], out[1]

    def collate(self, features: list[dict]) -> dict:
        idx = [f[INDEX] for f in features]
        labels = [f["labels"] for f in features]
        if isinstance(labels[0], list):  # per-token labels (token classification): padded with -100, as the
            width = max(map(len, labels))  # cached hidden states are (pad_sequence) -- to the longest example
            labels = [row + [-100] * (width - len(row)) for row in labels]
        labels = torch.tensor(labels)
        if self.timm:
            return {"pixel_values": torch.stack([self.store["pixel_values"][i] for i in idx]), "labels": labels}
        return {INDEX: torch.tensor(idx), "labels": labels}

    def _lookup(self, *args, **kwargs):
        idx = kwargs.get(INDEX)
        if idx is None:
            raise HftlError("cache_features: the model did not pass hftl_index to its backbone; "
                            "set strategy.cache_features: false for this architecture.")
        fields, idx = {}, idx.tolist()
        for k, rows in self.store.items():
            if k in self.unread:  # kept in its place (outputs[1] must stay the pooler's), never gathered or padded
                shape = rows[0].shape
                fields[k] = torch.full((len(idx), *shape[:-2], 1, shape[-1]), float("nan"))
                continue
            picked = [rows[i] for i in idx]
            if picked[0].dim() >= 2:
                fields[k] = nn.utils.rnn.pad_sequence(picked, batch_first=True)
            else:
                fields[k] = torch.stack(picked)
        device = next(self.task.parameters()).device
        return BaseModelOutputWithPooling(**{k: v.to(device) for k, v in fields.items()})

    def patch(self) -> None:
        if self.timm:
            self.backbone.forward_features = lambda x: x
        else:
            self.backbone.forward = self._lookup
            # Nothing in the backbone runs now: the Trainer's model.train() every step need not walk its modules.
            self.backbone.eval()
            self.backbone.train = lambda mode=True: self.backbone
        self._patched = True

    def works(self, dataset) -> bool:
        """One cached batch through the task model: some architectures do not pass extra inputs on. Then each
        token-level field is probed: when a NaN stand-in leaves the logits exactly as they were (a BERT-style
        classifier reads only the pooled output), the field is not padded and gathered every step."""
        was_training = self.task.training
        self.task.eval()
        batch = self.collate([dataset[i] for i in range(min(2, len(dataset)))])
        try:
            with torch.no_grad():
                reference = self._logits(batch)
                token_fields = [] if self.timm else [k for k, rows in self.store.items() if rows and rows[0].dim() >= 2]
                for k in token_fields:
                    self.unread.add(k)
                    try:
                        same = torch.equal(self._logits(batch), reference)
                    except Exception:  # noqa: BLE001 -- any failure means the field is read
                        same = False
                    if not same:
                        self.unread.discard(k)
            for k in self.unread:  # their rows are not needed (the disk entry keeps them): one row's shape will do
                self.store[k] = [self.store[k][0].clone()] * len(self.store[k])
            return True
        except (TypeError, HftlError) as e:
            logger.info("feature cache not used: %s", e)
            self.restore()
            return False
        finally:
            self.task.train(was_training)

    def _logits(self, batch) -> torch.Tensor:
        out = self.task(**{k: v for k, v in batch.items() if k != "labels"})
        return out.logits if hasattr(out, "logits") else out[0]

    def restore(self) -> None:
        if self._patched:
            del self.backbone.__dict__["forward_features" if self.timm else "forward"]
            if not self.timm:
                del self.backbone.__dict__["train"]
                self.backbone.train(self.task.training)
            self._patched = False
