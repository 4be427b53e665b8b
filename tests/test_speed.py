"""Speed defaults (training/speed.py): each one acts where it applies, stays off where it does not, is switched by its
recipe key and is named in the plan's header."""

from __future__ import annotations

import csv
import random

import pytest
import torch
from conftest import FILLER, NEG, POS, merge_sections
from torch.utils.data import SequentialSampler

import hftl
from hftl.training import speed
from hftl.training.pipeline import make_trainer
from hftl.training.setup import setup


@pytest.fixture
def ragged_csv(tmp_path):
    """Texts of 1 to 14 words: random batches of them carry much padding."""
    rng = random.Random(0)
    paths = []
    for name, n in (("train", 96), ("validation", 24)):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            for i in range(n):
                positive = i % 2 == 0
                words = rng.choices(FILLER, k=rng.randint(0, 13)) + [rng.choice(POS if positive else NEG)]
                w.writerow({"text": " ".join(words), "label": "pos" if positive else "neg"})
        paths.append(path)
    return paths


def _ragged(text_recipe, ragged_csv, **training):
    return text_recipe(data={"train_file": str(ragged_csv[0]), "validation_file": str(ragged_csv[1])},
                       training={"num_train_epochs": 1, **training})


def _epoch(trainer) -> tuple[list[int], int, int]:
    """One epoch of the Trainer's training batches: the examples' lengths in order, padding tokens, real tokens."""
    lengths, pad, real = [], 0, 0
    torch.manual_seed(0)
    for batch in trainer.get_train_dataloader():
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        real += int(mask.sum())
        lengths += [int(n) for n in mask.sum(1)]
    return lengths, pad, real


def same_update(recipe: dict) -> None:
    """One training step on a batch of 16 as two length-sorted micro-batches of 8 (speed.micro_batch: auto on a
    CPU) gives the loss and gradients of the whole batch (dropout off: the one thing that differs by design)."""
    recipe = merge_sections(recipe, {"training": {"per_device_train_batch_size": 16}})
    steps = []
    for micro in ("auto", None):
        s = setup(hftl.load_recipe(merge_sections(dict(recipe), {"speed": {"micro_batch": micro}})))
        assert s.micro_batch == (8 if micro else None)
        trainer = make_trainer(s)
        for m in s.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        torch.manual_seed(0)
        batch = next(iter(trainer.get_train_dataloader()))
        chunks = speed.sorted_chunks(batch, 8)
        if micro:  # less padding: each micro-batch cut to its own longest
            assert chunks is not None and len(chunks) == 2
            width = batch["attention_mask"].shape[1]
            assert sum(c["attention_mask"].numel() for c, _ in chunks) < 16 * width
        items = trainer._get_num_items_in_batch([batch], trainer.args.device)
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop
        s.model.zero_grad()
        loss = trainer.training_step(trainer.model, batch, items)
        grads = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
        steps.append((float(loss), grads))
    (loss_micro, micro_grads), (loss_whole, whole_grads) = steps
    assert loss_micro == pytest.approx(loss_whole, rel=1e-5)
    assert micro_grads.keys() == whole_grads.keys() and micro_grads
    for name, g in whole_grads.items():
        assert torch.allclose(micro_grads[name], g, atol=1e-6, rtol=1e-4), name


def test_micro_batches_give_the_whole_batch_update(text_recipe, ragged_csv, one_thread):
    recipe = _ragged(text_recipe, ragged_csv, per_device_train_batch_size=16)
    s = setup(hftl.load_recipe(recipe))
    assert "speed: length-sorted micro-batches of 8 (speed.micro_batch)" in s.plan.table()
    assert s.args.train_sampling_strategy == "random"  # the batches are the Trainer's own
    same_update(recipe)


def test_micro_batches_only_where_they_apply(text_recipe, ragged_csv, resnet_dir, image_recipe, one_thread):
    small = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, per_device_train_batch_size=8)))
    assert small.micro_batch is None  # a batch of 8: no two micro-batches of 8
    large = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, per_device_train_batch_size=32)))
    assert large.micro_batch == 16  # two of 16: larger products, a little more padding than four of 8
    same_length = setup(hftl.load_recipe(text_recipe(training={"per_device_train_batch_size": 16})))
    assert same_length.micro_batch is None  # every test text has 4 words: nothing to gain
    off = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, per_device_train_batch_size=16) | {
        "speed": {"micro_batch": None}}))
    assert off.micro_batch is None and "micro-batches" not in off.plan.table()
    cached = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, per_device_train_batch_size=16) | {
        "strategy": {"preset": "feature_extraction"}}))
    assert cached.cache is not None and cached.micro_batch is None  # no padding left to save
    images = setup(hftl.load_recipe(image_recipe(model_dir=resnet_dir, training={"per_device_train_batch_size": 16})))
    assert images.micro_batch is None
    # left padding: cutting columns would cut tokens
    left = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]] * 4)}
    assert speed.sorted_chunks(left, 2) is None


def test_group_by_length_batches_pad_less_and_evaluate_in_order(text_recipe, ragged_csv, one_thread):
    """training.train_sampling_strategy: group_by_length (the Trainer's option, not a default: it changes what a
    batch holds) pads less, shuffles the batches, and the evaluation stays in the dataset's order (the evaluation
    report pairs the last evaluation's predictions with the validation rows by position)."""
    grouped = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, train_sampling_strategy="group_by_length")))
    plain = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv)))
    assert "length-grouped batches (training.train_sampling_strategy)" in grouped.plan.table()
    assert "length-grouped" not in plain.plan.table()
    g_lengths, g_pad, g_real = _epoch(make_trainer(grouped))
    p_lengths, p_pad, p_real = _epoch(make_trainer(plain))
    assert sorted(g_lengths) == sorted(p_lengths) and g_real == p_real  # every example once an epoch
    assert g_pad < p_pad / 3, (g_pad, p_pad)
    widths = [max(g_lengths[i:i + 8]) for i in range(0, len(g_lengths), 8)]
    assert widths != sorted(widths, reverse=True)  # not longest first
    result = hftl.train(_ragged(text_recipe, ragged_csv, train_sampling_strategy="group_by_length"))
    trainer = result.trainer
    assert isinstance(trainer._get_eval_sampler(trainer.eval_dataset), SequentialSampler)
    model, rows = result.model.eval(), trainer.eval_dataset
    with torch.no_grad():
        expected = [model(**{k: torch.tensor([rows[i][k]]) for k in ("input_ids", "attention_mask")}).logits[0]
                    for i in range(len(rows))]
    assert torch.allclose(torch.as_tensor(trainer.last_evaluation.predictions), torch.stack(expected), atol=1e-5)
    # cached features train in the batches the uncached run would use: the cache changes only the speed
    frozen = {"preset": "feature_extraction"}
    cached = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, train_sampling_strategy="group_by_length") | {
        "strategy": frozen}))
    uncached = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv, train_sampling_strategy="group_by_length") | {
        "strategy": {**frozen, "cache_features": False}}))
    assert cached.cache is not None
    batches = []
    for s in (cached, uncached):
        torch.manual_seed(0)
        batches.append([b["labels"].tolist() for b in make_trainer(s).get_train_dataloader()])
    assert batches[0] == batches[1]


def test_pad_to_multiple_of(text_recipe, ragged_csv, one_thread):
    auto = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv)))
    assert auto.collator.pad_to_multiple_of is None  # auto: only on a CUDA GPU
    five = setup(hftl.load_recipe(_ragged(text_recipe, ragged_csv) | {"speed": {"pad_to_multiple_of": 5}}))
    assert "padding to a multiple of 5 (speed.pad_to_multiple_of)" in five.plan.table()
    widths = [(len(b["input_ids"][0]), int(b["attention_mask"].sum(1).max()))
              for b in make_trainer(five).get_train_dataloader()]
    assert all(w % 5 == 0 and 0 <= w - longest < 5 for w, longest in widths)
    assert any(w != longest for w, longest in widths)


def test_bf16_autocast_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(speed, "bf16_native", lambda device=None: True)
    assert speed.training_defaults({"use_cpu": True}) == {"bf16": True}
    assert speed.training_defaults({"use_cpu": True, "bf16": False}) == {}
    assert speed.training_defaults({"use_cpu": True, "fp16": True}) == {}
    monkeypatch.setattr(speed, "bf16_native", lambda device=None: False)
    assert speed.training_defaults({"use_cpu": True}) == {}


def test_bf16_default_follows_this_cpu(text_recipe, one_thread):
    s = setup(hftl.load_recipe(text_recipe()))
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert s.args.bf16 is native
    assert ("bf16 autocast" in s.plan.table()) is native


def test_bf16_autocast_runs_the_matmuls_in_bf16(text_recipe, one_thread):
    """training.bf16: true (the default where the hardware has it) trains under autocast: the linear layers
    compute in bf16 while the weights stay float32."""
    seen = []
    recipe = text_recipe(training={"bf16": True, "max_steps": 1, "eval_strategy": "no"})
    s = setup(hftl.load_recipe(recipe))
    trainer = make_trainer(s)
    layer = s.model.bert.encoder.layer[0].attention.self.query
    layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}
    assert layer.weight.dtype == torch.float32


def test_channels_last_for_conv_nets(image_recipe, resnet_dir, tmp_path, one_thread):
    result = hftl.train(image_recipe(model_dir=resnet_dir, training={"num_train_epochs": 1}))
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert "channels_last convolutions (speed.channels_last)" in (result.output_dir / "plan.md").read_text()
    # the saved model (safetensors wants contiguous tensors) loads and predicts as the trained one
    loaded = hftl.load_model(result.output_dir).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, result.model.eval()(pixel_values=x).logits, atol=1e-5)
    off = setup(hftl.load_recipe(image_recipe(model_dir=resnet_dir, speed={"channels_last": False})))
    assert all(m.weight.is_contiguous() for m in off.model.modules() if isinstance(m, torch.nn.Conv2d))


def test_transformers_are_not_channels_last(image_recipe, one_thread):
    s = setup(hftl.load_recipe(image_recipe()))  # a ViT: one patch-embedding convolution
    assert "channels_last" not in s.plan.table()
    assert all(m.weight.is_contiguous() for m in s.model.modules() if isinstance(m, torch.nn.Conv2d))
