"""PEFT through `hftl.train`: every method on the tiny BERT (and the tiny ViT where it applies).

For each run: only the adapter and the head changed, the head is saved with the adapter, the output dir
reloads to the same logits, and `peft.merge: true` writes a plain model with the same logits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import hftl
from hftl.runs.load import load_model

# Small runs: one epoch on 32 rows (16 images), evaluation on 16 (8).
FAST = {"num_train_epochs": 1, "learning_rate": 1e-2}
TEXT_DATA = {"max_train_samples": 32, "max_eval_samples": 16}
IMAGE_DATA = {"max_train_samples": 16, "max_eval_samples": 8}

# Names PEFT gives adapter parameters (and the prompt encoder of prefix/prompt tuning).
ADAPTER_PARAM = re.compile(r"\.(lora_[AB]|lora_magnitude_vector|ia3_l|hada_\w+|lokr_\w+)\.|prompt_encoder\.")
# The same tensors as saved in adapter_model.safetensors (PEFT drops the adapter name there).
SAVED_ADAPTER_KEY = re.compile(r"\.(lora_[AB]|lora_magnitude_vector|ia3_l|hada_\w+|lokr_\w+)(\.|$)|^prompt_embeddings$")
TEXT_METHODS = ["lora", "dora", "ia3", "loha", "lokr", "prefix_tuning", "prompt_tuning"]
IMAGE_METHODS = ["lora", "dora", "ia3", "loha", "lokr"]
PROMPT_METHODS = {"prefix_tuning", "prompt_tuning"}


pytestmark = pytest.mark.usefixtures("one_thread")


def text_batch(tokenizer_dir) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return dict(tok(["the movie was good", "it was really awful", "so sad this day"], padding=True, return_tensors="pt"))


def image_batch() -> dict:
    torch.manual_seed(1)
    return {"pixel_values": torch.randn(3, 3, 32, 32)}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits


def base_name(name: str) -> str:
    """Name of a wrapped layer's tensor in the plain model (`...query.base_layer.weight` -> `...query.weight`)."""
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def check_run(result, auto_cls, checkpoint, batch, head: list[str], merge: bool) -> None:
    from safetensors import safe_open

    model = result.model
    cfg = model.peft_config["default"]
    # (b) the head trains with the adapter and is saved in the adapter file.
    assert set(head) <= set(cfg.modules_to_save)
    with safe_open(str(result.output_dir / "adapter_model.safetensors"), "pt") as f:
        saved = set(f.keys())
    for h in head:
        assert any(f".{h}.weight" in k for k in saved), (h, sorted(saved))
    # ... and holds nothing else: adapter tensors and head only, never a copy of the base weights.
    heads = tuple(f".{h}.{p}" for h in head for p in ("weight", "bias"))
    assert all(SAVED_ADAPTER_KEY.search(k) or k.endswith(heads) for k in saved), sorted(saved)

    # (a) trainable = adapter + head copy; everything else bit-identical to the checkpoint.
    fresh = auto_cls.from_pretrained(str(checkpoint)).state_dict()
    # The task model inside the PeftModel, with PEFT's layers in it (the prompt encoder lives outside it).
    trained = model.get_base_model().state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head_copy = re.compile(r"\.modules_to_save\.default\.")
    assert trainable and all(ADAPTER_PARAM.search(n) or head_copy.search(n) for n in trainable), sorted(trainable)
    assert any(ADAPTER_PARAM.search(n) for n in trainable)
    base_seen = set()
    for n, t in trained.items():
        if ADAPTER_PARAM.search(n) or head_copy.search(n):
            continue
        name = base_name(n)
        assert name in fresh, n
        assert torch.equal(t, fresh[name]), f"{n} changed during training"
        base_seen.add(name)
    assert base_seen == set(fresh)
    # The trained head differs from the checkpoint's (it did train).
    for h in head:
        copy = trained[f"{h}.modules_to_save.default.weight"]
        assert not torch.equal(copy, fresh[f"{h}.weight"]), f"head {h} did not train"

    # (c) the output dir reloads to the same logits.
    expected = logits(model, batch)
    reloaded = load_model(result.output_dir)
    assert (logits(reloaded, batch) - expected).abs().max().item() < 1e-5

    # (d) the merged model is a plain checkpoint with the same logits.
    if merge:
        merged = auto_cls.from_pretrained(str(result.output_dir / "merged"))
        assert not any(ADAPTER_PARAM.search(n) for n, _ in merged.named_parameters())
        assert (logits(merged, batch) - expected).abs().max().item() < 1e-4
    else:
        assert not (result.output_dir / "merged").exists()


def bert_takes_kv_prefix() -> bool:
    """PEFT's prefix tuning hands the prefix to the model as `past_key_values`; transformers 5.24 renamed that
    argument `cache` (PEFT 0.21 checks the old name) and BERT's encoder attention no longer masks a prefix."""
    import inspect

    from transformers import BertModel

    return "past_key_values" in inspect.signature(BertModel.forward).parameters


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_text_methods(method, text_recipe, bert_dir):
    from transformers import AutoModelForSequenceClassification

    merge = method not in PROMPT_METHODS
    recipe = text_recipe(training=FAST, data=TEXT_DATA, peft={"method": method, "merge": merge})
    if method == "prefix_tuning" and not bert_takes_kv_prefix():
        # The pre-flight step finds it before training: one recipe error, nothing written.
        with pytest.raises(hftl.HftlError) as err:
            hftl.train(recipe)
        msg = str(err.value)
        assert "'peft.method'" in msg and "prefix_tuning" in msg and "BertForSequenceClassification" in msg
        assert "Try prompt_tuning" in msg and "\n" not in msg
        assert not Path(recipe["training"]["output_dir"]).exists()
        return
    result = hftl.train(recipe)
    batch = text_batch(bert_dir)
    check_run(result, AutoModelForSequenceClassification, bert_dir, batch, ["classifier"], merge)
    if method == "lora":
        # `hftl export --merge` after the fact gives the same model as peft.merge: true.
        from hftl.runs.export import export_merged

        target = export_merged(result.output_dir, result.output_dir.parent / "exported")
        exported = AutoModelForSequenceClassification.from_pretrained(str(target))
        assert (logits(exported, batch) - logits(result.model, batch)).abs().max().item() < 1e-4
        assert (target / "tokenizer.json").is_file()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_methods(method, image_recipe, vit_dir):
    from transformers import AutoModelForImageClassification

    recipe = image_recipe(training=FAST, data=IMAGE_DATA, peft={"method": method, "merge": True})
    result = hftl.train(recipe)
    check_run(result, AutoModelForImageClassification, vit_dir, image_batch(), ["classifier"], True)


def test_distilbert_pre_classifier_is_saved(text_recipe, bert_dir, tmp_path):
    """DistilBERT's head is two modules (pre_classifier + classifier): both must train and be saved."""
    from transformers import (
        AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification,
    )

    ckpt = tmp_path / "distilbert"
    tokenizer = AutoTokenizer.from_pretrained(str(bert_dir))  # the tiny word-level vocab, saved beside the model
    tokenizer.save_pretrained(ckpt)
    torch.manual_seed(0)
    DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
    )).save_pretrained(ckpt)

    recipe = text_recipe(model={"model_name_or_path": str(ckpt)}, training=FAST, data=TEXT_DATA,
                         peft={"method": "lora", "merge": True})
    result = hftl.train(recipe)
    assert result.model.peft_config["default"].target_modules == {"q_lin", "v_lin"}
    check_run(result, AutoModelForSequenceClassification, ckpt, text_batch(ckpt), ["pre_classifier", "classifier"], True)


def test_target_modules_matching_nothing_lists_linear_layers(text_recipe):
    recipe = text_recipe(training=FAST, data=TEXT_DATA, peft={"method": "lora", "target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(hftl.HftlError) as e:
        hftl.train(recipe)
    msg = str(e.value)
    assert "peft.target_modules" in msg
    for name in ("query", "key", "value", "dense"):
        assert name in msg
    # The run never started, so it leaves no output dir behind.
    assert not hftl.load_recipe(recipe).output_dir.exists()


def test_target_modules_regex_matching_nothing(text_recipe):
    recipe = text_recipe(training=FAST, data=TEXT_DATA, peft={"method": "lora", "target_modules": r".*\.nothing$"})
    with pytest.raises(hftl.HftlError, match=r"peft\.target_modules.*query"):
        hftl.train(recipe)


def test_unknown_peft_key_suggests(text_recipe):
    with pytest.raises(hftl.RecipeError, match=r"peft\.lora_alpa.*Did you mean 'lora_alpha'"):
        hftl.load_recipe(text_recipe(peft={"method": "lora", "lora_alpa": 16}))


def test_bad_peft_value_is_refused_before_loading(text_recipe):
    # PEFT's own config class judges the values when the recipe loads, not after the model is built.
    peft = {"method": "lora", "target_modules": ".*query", "layers_to_transform": [0]}
    with pytest.raises(hftl.RecipeError, match=r"rejected by PEFT: `layers_to_transform` cannot be used"):
        hftl.load_recipe(text_recipe(peft=peft))


def test_ia3_with_explicit_targets_on_vit():
    """PEFT has no IA3 feedforward table for ViT: with only target_modules given, hftl must still build it."""
    import tiny_models

    from hftl.model.adapters import build_peft_model
    from hftl.recipe import PeftSection

    section = PeftSection(method="ia3", target_modules=["k_proj", "v_proj", "fc2"])
    model = build_peft_model(tiny_models.vit(), section, None, ["classifier"])
    adapted = {n.split(".")[-3] for n, _ in model.named_parameters() if ".ia3_l." in n}
    assert adapted == {"k_proj", "v_proj", "fc2"}


def test_unknown_method_suggests(text_recipe):
    with pytest.raises(hftl.RecipeError, match=r"Did you mean 'lora'"):
        hftl.load_recipe(text_recipe(peft={"method": "lorra"}))


def test_prefix_tuning_on_images_is_refused(image_recipe):
    with pytest.raises(hftl.RecipeError, match=r"prefix_tuning.*text-classification"):
        hftl.load_recipe(image_recipe(peft={"method": "prefix_tuning"}))


def test_merge_of_prompt_method_is_refused(text_recipe):
    with pytest.raises(hftl.RecipeError, match=r"peft\.merge"):
        hftl.load_recipe(text_recipe(peft={"method": "prompt_tuning", "merge": True}))


def test_layer_decay_over_lora_params(text_recipe):
    lr, decay = 1e-2, 0.5
    recipe = text_recipe(training={**FAST, "learning_rate": lr}, data=TEXT_DATA, peft={"method": "lora"},
                         strategy={"discriminative_lr": {"layer_decay": decay}})
    result = hftl.train(recipe)
    depth = result.plan.layer_map.depth
    head_depth = result.plan.layer_map.head_depth
    # The scheduler has decayed "lr" to 0 by the end; "initial_lr" is what each group started with.
    lr_of = {n: g["initial_lr"] for g in result.trainer.optimizer.param_groups for n in g["param_names"]}
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert set(lr_of) == trainable

    def lrs(pattern: str) -> set[float]:
        return {lr_of[n] for n in lr_of if re.search(pattern, n)}

    layer0, layer1 = lrs(r"layer\.0\..*lora_"), lrs(r"layer\.1\..*lora_")
    head = lrs(r"classifier\.modules_to_save")
    assert layer0 and layer1 and head
    for pattern, group in ((r"layer\.0\..*lora_", layer0), (r"layer\.1\..*lora_", layer1), ("classifier", head)):
        for n in lr_of:
            if re.search(pattern, n):
                assert lr_of[n] == pytest.approx(lr * decay ** (head_depth - depth[n]))
    # BERT: embeddings 0, encoder.layer.0 -> 1, encoder.layer.1 -> 2, pooler 3, head 4.
    assert head_depth == 4
    assert [pytest.approx(x) for x in (max(layer0), max(layer1), max(head))] == [lr * decay**3, lr * decay**2, lr]
    assert len(layer0) == len(layer1) == len(head) == 1


def test_plan_shows_matched_target_modules(text_recipe):
    from hftl.api import plan

    table = plan(text_recipe(peft={"method": "lora", "r": 4}))
    assert "Adapter on 4 modules (query, value)" in table  # 2 layers x query/value
    assert "modules_to_save): classifier" in table


def test_lora_on_a_conv_net_names_its_convolutions(image_recipe, resnet_dir):
    """A conv net has no attention projections: the error lists the convolutions LoRA can adapt, and they work."""
    recipe = image_recipe(model_dir=resnet_dir, training=FAST, data=IMAGE_DATA, peft={"method": "lora"})
    with pytest.raises(hftl.HftlError, match=r"convolutions \(LoRA adapts Conv2d too\): convolution"):
        hftl.train(recipe)
    assert not hftl.load_recipe(recipe).output_dir.exists()

    from transformers import AutoModelForImageClassification

    before = dict(AutoModelForImageClassification.from_pretrained(resnet_dir).named_parameters())
    recipe = image_recipe(model_dir=resnet_dir, training=FAST, data=IMAGE_DATA,
                          peft={"method": "lora", "r": 4, "target_modules": ["convolution"]})
    model = hftl.train(recipe).model
    lora = [n for n, _ in model.named_parameters() if ".lora_A." in n]
    assert lora and all("convolution" in n for n in lora)
    frozen = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters()
              if ".lora_" not in n and "classifier" not in n}
    assert "resnet.embedder.embedder.convolution.weight" in frozen
    for name, p in frozen.items():
        assert torch.equal(p, before[name]), name  # the conv weights themselves stay frozen
