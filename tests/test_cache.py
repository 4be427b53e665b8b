"""Cached-feature extraction gives the same head as the normal frozen-backbone run, and a normal model."""

from __future__ import annotations

import pytest
import torch

import hftl
from hftl.errors import HftlError


def _head(result) -> dict[str, torch.Tensor]:
    lm = result.plan.layer_map
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if lm.depth[n] == lm.head_depth}


def _same_run(make, tag="", **kw):
    runs = []
    for cache in (False, True):
        recipe = make(strategy={"preset": "feature_extraction", "cache_features": cache}, **kw)
        recipe["training"] = {**recipe["training"], "output_dir": f"{recipe['training']['output_dir']}_{tag}{cache}"}
        runs.append(hftl.train(recipe))
    return runs


def _ragged_csv(path, n, seed):
    """Texts of different lengths, so batches carry padding (masked mean pooling must ignore it)."""
    import csv
    import random

    from conftest import FILLER, NEG, POS

    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = rng.sample(FILLER, rng.randint(0, 6)) + [rng.choice(POS if i % 2 else NEG)]
            w.writerow([" ".join(words), "pos" if i % 2 else "neg"])
    return str(path)


@pytest.mark.parametrize("pooling", ["default", "mean"])
def test_cached_text_run_equals_plain_frozen_run(text_recipe, tmp_path, pooling):
    data = {"train_file": _ragged_csv(tmp_path / "train.csv", 96, 0),
            "validation_file": _ragged_csv(tmp_path / "val.csv", 32, 1)}
    plain, cached = _same_run(text_recipe, tag=pooling, model={"pooling": pooling}, data=data,
                              training={"num_train_epochs": 3, "learning_rate": 1e-2})
    a, b = _head(plain), _head(cached)
    assert a.keys() == b.keys() and a
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-5), n
    assert cached.metrics["eval_accuracy"] == plain.metrics["eval_accuracy"]
    assert cached.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], abs=1e-5)
    # the saved model is a normal full model: it reloads and predicts like the trained one
    batch = plain.trainer.data_collator([plain.trainer.eval_dataset[i] for i in range(4)])
    batch.pop("labels")
    with torch.no_grad():
        want = cached.model.eval()(**batch).logits
        got = hftl.load_model(cached.output_dir)(**batch).logits
    assert torch.allclose(want, got, atol=1e-5)


def test_cached_image_runs_equal_plain_frozen_runs(image_recipe, tmp_path):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    plain, cached = _same_run(image_recipe, data={"augment": False}, training={"num_train_epochs": 2})
    for n, t in _head(plain).items():
        assert torch.allclose(t, _head(cached)[n], atol=1e-5), n
    # timm models (TimmWrapper): the cached features go through the model's own forward_head
    d = tmp_path / "timm"
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
           "crop_pct": 1.0, "num_classes": 2}
    TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=2,
                                                        pretrained_cfg=cfg)).save_pretrained(d)
    TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture="resnet10t").save_pretrained(d)
    plain, cached = _same_run(lambda **kw: image_recipe(model_dir=d, **kw), tag="timm", data={"augment": False},
                              training={"num_train_epochs": 2})
    for n, t in _head(plain).items():
        assert torch.allclose(t, _head(cached)[n], atol=1e-5), n
    # the finished run's Trainer is back on the real images (its model has its real forward again)
    assert cached.metrics["cached_features"]
    assert cached.trainer.evaluate()["eval_accuracy"] == pytest.approx(cached.metrics["eval_accuracy"])


def test_cache_true_with_augmentation_or_trainable_backbone_is_refused(image_recipe, text_recipe):
    with pytest.raises(HftlError, match="cache_features.*augmentation"):
        hftl.train(image_recipe(strategy={"preset": "feature_extraction", "cache_features": True},
                                data={"augment": {"horizontal_flip": True}}))
    with pytest.raises(HftlError, match="cache_features.*backbone parameters train"):
        hftl.train(text_recipe(strategy={"preset": "full", "cache_features": True}))


def test_frozen_backbone_runs_in_eval_mode(text_recipe):
    """Feature extraction: the frozen backbone is a fixed feature extractor (no dropout) -- what makes
    the cache exact, and what Keras does for a frozen base model."""
    from transformers import TrainerCallback

    seen = []

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.bert.encoder.register_forward_hook(lambda m, i, o: seen.append((m.training, model.training)))

    hftl.train(text_recipe(strategy={"preset": "feature_extraction", "cache_features": False},
                           training={"num_train_epochs": 1}), callbacks=[Probe()])
    train_steps = [s for s in seen if s[1]]
    assert train_steps and not any(encoder for encoder, _ in train_steps)


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_fields_the_head_never_reads_are_not_gathered(bert_dir, head):
    """A BERT sequence classifier reads only the pooled output: the cached token states get a NaN stand-in, and the
    logits stay exactly those of the real backbone; a token classifier reads them, so they are served. While the
    features are served, model.train() does not walk (or switch) the idle backbone; restore() gives it back."""
    from datasets import Dataset
    from transformers import (AutoTokenizer, BertForSequenceClassification, BertForTokenClassification,
                              DataCollatorForTokenClassification, DataCollatorWithPadding)

    from hftl.training.cache import FeatureCache

    tok = AutoTokenizer.from_pretrained(bert_dir)
    enc = tok(["good movie", "the food was really awful", "so sad", "nice day it was"])
    if head == "sequence":
        model, collator = BertForSequenceClassification.from_pretrained(bert_dir), DataCollatorWithPadding(tok)
        labels = [1, 0, 0, 1]
    else:
        model, collator = BertForTokenClassification.from_pretrained(bert_dir), DataCollatorForTokenClassification(tok)
        labels = [[i % 2] * len(ids) for i, ids in enumerate(enc["input_ids"])]
    data = Dataset.from_dict({**enc, "labels": labels})
    model.eval()
    batch = collator([data[i] for i in range(4)])
    batch.pop("labels")
    with torch.no_grad():
        want = model(**batch).logits
    cache = FeatureCache(model, collator, batch_size=2, persist=False)
    train_ds, _ = cache.datasets(data, data)
    cache.patch()
    assert cache.works(train_ds)
    assert cache.unread == ({"last_hidden_state"} if head == "sequence" else set())
    rows = cache.store["last_hidden_state"]  # an unread field's rows are let go (one shared row keeps the shape)
    assert len({id(r) for r in rows}) == (1 if head == "sequence" else len(rows))
    with torch.no_grad():
        got = model(**{k: v for k, v in cache.collate([train_ds[i] for i in range(4)]).items() if k != "labels"}).logits
    real = batch["attention_mask"].bool() if head == "token" else slice(None)  # padding: zeros vs states of [PAD]
    torch.testing.assert_close(got[real], want[real])
    model.train()
    assert model.classifier.training and not model.bert.encoder.training
    cache.restore()
    assert model.bert.encoder.training and "train" not in model.bert.__dict__
