"""CLIP, SigLIP and DINOv2 vision towers train through the image-classification task like any ViT.

Tiny random checkpoints (hidden 32, 2 layers, 32 px, patch 8), saved with their own image processors the way the
Hub ships them (CLIP/SigLIP as the dual-encoder config, text tower included). For each architecture: the layer
map finds the encoder blocks and the classifier, feature extraction leaves the backbone bit-identical,
discriminative LR puts the layer map's rates into the optimizer, and LoRA lands on the attention projections and
reloads to the same logits. The trap: CLIP/SigLIP's `base_model_prefix` ('clip', 'siglip') names no attribute of
the image classifier (its tower is `vision_model`), so a head found by the prefix alone is empty.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

import hftl
from hftl.hooks import build_layer_map, find_backbone, find_head

pytestmark = pytest.mark.usefixtures("one_thread")

_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
               patch_size=8)
_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
             max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
TOWERS = ["clip", "siglip", "dinov2"]
# Where each architecture keeps its encoder blocks, and the attention projections LoRA should find by default.
BLOCKS = {"clip": "vision_model.encoder.layers", "siglip": "vision_model.encoder.layers",
          "dinov2": "dinov2.encoder.layer"}


def _build(name: str):
    """(model, image processor) for one tower, from configs only."""
    import transformers as tf

    if name == "clip":
        model = tf.CLIPForImageClassification(tf.CLIPConfig(vision_config=_VISION, text_config=_TEXT, num_labels=2))
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif name == "siglip":
        model = tf.SiglipForImageClassification(tf.SiglipConfig(vision_config=_VISION, text_config=_TEXT, num_labels=2))
        proc = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        model = tf.Dinov2ForImageClassification(tf.Dinov2Config(**_VISION, num_labels=2))
        proc = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, proc


@pytest.fixture(scope="module", params=TOWERS)
def tower(request, tmp_path_factory):
    """(name, checkpoint dir) of a tiny random tower saved like a Hub checkpoint."""
    torch.manual_seed(0)
    model, proc = _build(request.param)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return request.param, d


def recipe(image_recipe, tower, **sections):
    name, d = tower
    training = {"max_steps": 3, "learning_rate": 1e-2, "eval_strategy": "no", "weight_decay": 0.1, "use_cpu": True,
                **sections.pop("training", {})}
    return image_recipe(model_dir=d, training=training, data={"max_train_samples": 16, "max_eval_samples": 8},
                        **sections)


class StartSnapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}


def _load(d):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(d)


# ------------------------------------------------------------------------------------------ layer map and plan


def test_layer_map_finds_encoder_blocks_and_classifier(tower, image_recipe):
    name, d = tower
    model = _load(d)
    assert find_backbone(model)[0] == BLOCKS[name].split(".")[0]  # clip/siglip: not their base_model_prefix
    assert find_head(model) == ["classifier"]
    lm = build_layer_map(model)
    blocks = BLOCKS[name]
    assert lm.blocks == [f"{blocks}.0", f"{blocks}.1"]
    assert lm.num_blocks == 2 and lm.head_depth == 4
    assert set(lm.depth) == {n for n, _ in model.named_parameters()}
    for n, depth in lm.depth.items():
        if n.startswith("classifier."):
            expected = lm.head_depth
        elif n.startswith(f"{blocks}."):
            expected = int(n[len(blocks) + 1:].split(".")[0]) + 1
        elif ".embeddings." in n or ".pre_layrnorm." in n:  # CLIP normalises the embeddings before block 0
            expected = 0
        else:  # final norm (and SigLIP's attention-pooling head): after the blocks
            expected = lm.num_blocks + 1
        assert depth == expected, (n, depth, expected)
    assert lm.names_at(0) and lm.names_at(lm.num_blocks + 1)

    table = hftl.plan(recipe(image_recipe, tower, strategy={"discriminative_lr": {"layer_decay": 0.5}}))
    rows = {int(cells[0]): cells for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines())
            if len(cells) == 7 and cells[0].isdigit()}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert [rows[d][1] for d in range(5)] == lm.labels
    assert rows[1][1].endswith(".0") and rows[2][1].endswith(".1")
    assert rows[4][1] == "head" and "classifier" in rows[4][2]
    assert rows[4][5] == "1.00e-02" and rows[0][5] == "6.25e-04"


# ------------------------------------------------------------------------------------------ strategies


def test_feature_extraction_keeps_the_backbone_bit_identical(tower, image_recipe):
    snap = StartSnapshot()
    r = hftl.train(recipe(image_recipe, tower, strategy={"preset": "feature_extraction"}), callbacks=[snap])
    lm = r.plan.layer_map
    end = dict(r.model.named_parameters())
    head = [n for n, dep in lm.depth.items() if dep == lm.head_depth]
    assert head == ["classifier.weight", "classifier.bias"]
    for n, dep in lm.depth.items():
        if dep == lm.head_depth:
            assert not torch.equal(end[n], snap.start[n]), f"head {n} did not train"
        else:
            assert torch.equal(end[n], snap.start[n]), f"frozen {n} (depth {dep}) moved"
            assert not end[n].requires_grad
    assert r.trainer.state.global_step == 3


def test_discriminative_lr_param_groups(tower, image_recipe):
    r = hftl.train(recipe(image_recipe, tower, strategy={"discriminative_lr": {"layer_decay": 0.5}},
                          training={"max_steps": 1, "learning_rate": 1e-3}))
    lm = r.plan.layer_map
    lr_of = {}
    for g in r.trainer.optimizer.param_groups:
        for n in g["param_names"]:
            assert n not in lr_of, f"{n} in two param groups"
            lr_of[n] = g["initial_lr"]
    assert set(lr_of) == set(lm.depth)  # every parameter trains, each at its depth's rate
    for n, lr in lr_of.items():
        assert lr == pytest.approx(1e-3 * 0.5 ** (lm.head_depth - lm.depth[n]), rel=1e-9), n
    assert all(lr_of[n] == pytest.approx(1e-3) for n in ("classifier.weight", "classifier.bias"))
    assert all(lr_of[n] == pytest.approx(1e-3 / 16) for n in lm.names_at(0))  # embeddings: 4 depths below
    assert len({round(lr, 12) for lr in lr_of.values()}) == lm.head_depth + 1


def test_lora_on_attention_projections_trains_and_reloads(tower, image_recipe):
    name, d = tower
    snap = StartSnapshot()
    r = hftl.train(recipe(image_recipe, tower, peft={"method": "lora", "r": 4}), callbacks=[snap])
    plain = _load(d)
    projections = {n.rsplit(".", 1)[-1] for n, _ in plain.named_modules() if n.endswith(("q_proj", "v_proj"))}
    assert projections == {"q_proj", "v_proj"}  # the names the checkpoint itself uses

    params = dict(r.model.named_parameters())
    lora = [n for n in params if ".lora_" in n]
    adapted = {n.split(".lora_")[0] for n in lora}
    blocks = BLOCKS[name]
    attn = "attention" if name == "dinov2" else "self_attn"
    expected = {f"{blocks}.{i}.{attn}.{proj}" for i in range(2) for proj in ("q_proj", "v_proj")}
    assert {a.removeprefix("base_model.model.") for a in adapted} == expected
    for n, p in params.items():
        moved = not torch.equal(p, snap.start[n])
        if ".lora_B." in n or "modules_to_save" in n:
            assert p.requires_grad and moved, f"{n} did not train"
        elif ".lora_A." in n:
            assert p.requires_grad
        else:
            assert not p.requires_grad and not moved, f"frozen {n} moved"
    assert any("classifier.modules_to_save" in n for n in params)  # the new head is saved with the adapter
    assert (r.output_dir / "adapter_model.safetensors").is_file()

    torch.manual_seed(1)
    batch = torch.randn(3, 3, 32, 32)
    reloaded = hftl.load_model(r.output_dir)
    with torch.no_grad():
        trained = r.model.eval()(pixel_values=batch).logits
        again = reloaded.eval()(pixel_values=batch).logits
        base = plain.eval()(pixel_values=batch).logits
    assert torch.allclose(trained, again, atol=1e-6), (trained, again)
    assert not torch.allclose(trained, base[:, : trained.shape[1]], atol=1e-4)  # the adapter did change the model


# ------------------------------------------------------------------------------------------ CLI and launch


@pytest.mark.slow
def test_clip_linear_probe_from_the_cli_and_accelerate_launch(image_recipe, tmp_path):
    """The shipped linear-probe strategy on a CLIP tower, through `hftl train` and `accelerate launch hftl/run.py`."""
    import json
    import subprocess
    import sys

    import yaml

    from conftest import ROOT, child_env
    from test_distributed import ACCELERATE

    torch.manual_seed(0)
    model, proc = _build("clip")
    model.save_pretrained(tmp_path / "clip")
    proc.save_pretrained(tmp_path / "clip")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(image_recipe, ("clip", tmp_path / "clip"),
                                          strategy={"preset": "feature_extraction"})))
    for command in ([sys.executable, "-m", "hftl.cli", "train", str(path)],
                    [*ACCELERATE, "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no", str(ROOT / "hftl" / "run.py"), str(path), "overwrite_output_dir=true"]):
        run = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert out["epoch"] > 0 and "eval_accuracy" in out
        assert "| frozen |" in (tmp_path / "out" / "plan.md").read_text()
