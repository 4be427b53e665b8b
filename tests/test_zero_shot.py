"""`task: zero-shot-image-classification` on tiny CLIP, SigLIP and VisionTextDualEncoder (ViT + BERT) models built
offline: the baseline equals transformers' zero-shot pipeline, contrastive fine-tuning learns (FLYP), a locked image
tower stays bit-identical (LiT), each tower has its own depths, prompt templates are averaged as CLIP does, and
the bad inputs are one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf

import hftl
from hftl.errors import HftlError, RecipeError

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["a", "photo", "of", "the", "blue", "red", "green", "picture", "an", "image", "thing", "this", "is"]
TEXT = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64)
VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, image_size=32,
              patch_size=8)
TEMPLATE = "a photo of a {}."


def word_tokenizer():
    """A word-level tokenizer for the prompts' words (<s> ... </s> around each text: CLIP pools at </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "<s>", "</s>", *WORDS, "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
                                      eos_token="</s>")


def build(kind: str, d: Path) -> Path:
    torch.manual_seed(0)
    text = dict(TEXT, eos_token_id=3, bos_token_id=2, pad_token_id=0)
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
        processor = tf.CLIPProcessor(image_processor=tf.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=word_tokenizer())
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=VISION))
        processor = tf.SiglipProcessor(image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}),
                                       tokenizer=word_tokenizer())
    else:
        config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(tf.ViTConfig(**VISION), tf.BertConfig(**TEXT),
                                                                         projection_dim=16)
        model = tf.VisionTextDualEncoderModel(config)
        processor = tf.VisionTextDualEncoderProcessor(image_processor=tf.ViTImageProcessor(
            size={"height": 32, "width": 32}), tokenizer=word_tokenizer())
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def dual_encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual_encoders")
    return {kind: build(kind, root / kind) for kind in ("clip", "siglip", "dual")}


def zs_recipe(model_dir, image_dirs, out, **sections):
    from conftest import merge_sections

    recipe = {"task": "zero-shot-image-classification", "model": {"model_name_or_path": str(model_dir)},
              "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1]), "augment": False},
              "training": {"output_dir": str(out), "num_train_epochs": 4, "learning_rate": 1e-3,
                           "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "save_strategy": "no",
                           "logging_steps": 2, "dataloader_num_workers": 0},
              "seed": 0}
    return merge_sections(recipe, sections)


def _pipeline(kind, run_dir):
    if kind != "dual":
        return tf.pipeline("zero-shot-image-classification", model=str(run_dir))
    # transformers' zero-shot Auto class does not map vision-text-dual-encoder: the pipeline takes the model itself
    processor = tf.AutoProcessor.from_pretrained(run_dir)
    return tf.pipeline("zero-shot-image-classification", model=tf.VisionTextDualEncoderModel.from_pretrained(run_dir),
                       tokenizer=processor.tokenizer, image_processor=processor.image_processor)


@pytest.mark.parametrize("kind", ["clip", "siglip", "dual"])
def test_the_baseline_is_the_zero_shot_pipelines_own(kind, dual_encoders, image_dirs, tmp_path):
    r = hftl.train(zs_recipe(dual_encoders[kind], image_dirs, tmp_path / "out", training={"num_train_epochs": 0}))
    labels = json.loads((r.output_dir / "labels.json").read_text())
    pipe = _pipeline(kind, r.output_dir)
    files = sorted(Path(image_dirs[1]).rglob("*.png"))
    tops = [pipe(str(f), candidate_labels=labels, hypothesis_template=TEMPLATE)[0]["label"] for f in files]
    accuracy = sum(t == f.parent.name for t, f in zip(tops, files)) / len(files)
    assert r.metrics["eval_accuracy"] == pytest.approx(accuracy)
    rows = hftl.predict(r.output_dir, [str(f) for f in files])
    assert [row["label"] for row in rows] == tops
    if kind == "clip":  # both softmax the same logits
        scores = pipe(str(files[0]), candidate_labels=labels, hypothesis_template=TEMPLATE)
        assert {s["label"]: s["score"] for s in scores} == pytest.approx(rows[0]["scores"], abs=1e-5)


def test_contrastive_fine_tuning_learns_and_the_run_loads_in_the_pipeline(dual_encoders, image_dirs, tmp_path):
    r = hftl.train(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out"))
    assert r.metrics["eval_accuracy"] == 1.0
    card = (r.output_dir / "README.md").read_text()
    assert "candidate_labels=['blue', 'red'], hypothesis_template='a photo of a {}.'" in card
    pipe = _pipeline("clip", r.output_dir)
    files = sorted(Path(image_dirs[1]).rglob("*.png"))
    assert all(pipe(str(f), candidate_labels=["blue", "red"], hypothesis_template=TEMPLATE)[0]["label"] == f.parent.name
               for f in files)
    # other labels at prediction: the model reads them
    rows = hftl.predict(r.output_dir, [str(files[0])], labels=["red", "green", "blue"])
    assert set(rows[0]["scores"]) == {"red", "green", "blue"}


def test_locked_image_tower_stays_bit_identical(dual_encoders, image_dirs, tmp_path):
    """LiT: the image tower and its projection frozen by pattern; the text tower learns to meet it."""
    base = tf.CLIPModel.from_pretrained(dual_encoders["clip"]).state_dict()
    r = hftl.train(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out",
                             strategy={"freeze": {"patterns": ["vision_model.*", "visual_projection.*"]}},
                             training={"num_train_epochs": 6}))
    end = r.model.state_dict()
    vision = [k for k in end if k.startswith(("vision_model.", "visual_projection."))]
    assert vision and all(torch.equal(end[k], base[k]) for k in vision)
    assert any(not torch.equal(end[k], base[k]) for k in end if k.startswith("text_model."))
    assert r.metrics["eval_accuracy"] >= 0.9


def test_each_tower_has_its_own_depths(dual_encoders, image_dirs, tmp_path):
    """3 vision blocks, 2 text blocks: both towers' top blocks one depth below the post norms, the projections and
    the logit scale the head; layer_decay counts from there in each tower."""
    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out",
                                         strategy={"discriminative_lr": {"layer_decay": 0.5}})))
    lm = s.plan.layer_map
    assert lm.head_depth == 5
    depth = {n.split(".weight")[0].split(".bias")[0]: d for n, d in lm.depth.items()}
    assert depth["vision_model.encoder.layers.2.mlp.fc1"] == depth["text_model.encoder.layers.1.mlp.fc1"] == 3
    assert depth["vision_model.embeddings.patch_embedding"] == 0 and depth["text_model.embeddings.token_embedding"] == 1
    assert depth["visual_projection"] == depth["text_projection"] == lm.depth["logit_scale"] == 5
    lr = {n: a.lr for n, a in s.plan.lrs.items()}
    top = 1e-3 * 0.25
    assert lr["text_model.encoder.layers.1.mlp.fc1.weight"] == lr["vision_model.encoder.layers.2.mlp.fc1.weight"] \
        == pytest.approx(top)
    # gradual unfreezing from the head down reaches both towers' top blocks together
    s = setup(hftl.load_recipe(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out",
                                         strategy={"gradual_unfreezing": {"every_epochs": 1}})))
    assert s.plan.unfreeze_at[3] == "epoch 2" and s.plan.unfreeze_at[5] == "start"
    active = s.plan.trainable.active
    assert "text_projection.weight" in active and "text_model.encoder.layers.1.mlp.fc1.weight" not in active


def test_prompt_templates_average_the_text_embeddings(dual_encoders, image_dirs, tmp_path):
    from hftl.tasks.zero_shot import class_logits

    templates = ["a photo of a {}.", "the {} thing."]
    s_recipe = zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out", data={"prompt_templates": templates})
    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(s_recipe))
    batch = s.collator([s.eval_dataset[i] for i in range(4)])
    model = s.model.eval()
    with torch.no_grad():
        got = class_logits(model, batch)
        image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        image = image / image.norm(dim=-1, keepdim=True)
        text = []
        for name in s.splits.label_names:
            tokens = s.processor.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            emb = model.get_text_features(**tokens).pooler_output
            emb = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            text.append(emb / emb.norm())
    assert torch.allclose(got, image @ torch.stack(text).t() * model.logit_scale.exp(), atol=1e-5)


def test_bad_inputs_are_one_clear_error(dual_encoders, image_dirs, vit_dir, tmp_path):
    with pytest.raises(RecipeError, match=r"data.prompt_template.*'\{\}' once"):
        hftl.load_recipe(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "o", data={"prompt_template": "a photo"}))
    with pytest.raises(HftlError, match=r"model.model_name_or_path.*vit model, with no text tower"):
        hftl.train(zs_recipe(vit_dir, image_dirs, tmp_path / "o"))
    blank = tmp_path / "blank"
    for name in ("blue", "   "):
        (blank / name).mkdir(parents=True)
        for src in list((Path(image_dirs[0]) / "blue").glob("*.png"))[:3]:
            (blank / name / src.name).write_bytes(src.read_bytes())
    with pytest.raises(HftlError, match=r"class name\(s\) \['   '\] tokenize to nothing"):
        hftl.train(zs_recipe(dual_encoders["clip"], (blank, blank), tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_wise_ft_interpolates_the_base_and_the_fine_tuned_weights(dual_encoders, image_dirs, tmp_path):
    r = hftl.train(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out", training={"num_train_epochs": 2}))
    m = r.metrics
    assert m["wise_ft_1_accuracy"] == pytest.approx(m["eval_accuracy"])  # alpha 1: the run itself
    baseline = hftl.train(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "base",
                                    training={"num_train_epochs": 0}))
    assert m["wise_ft_0_accuracy"] == pytest.approx(baseline.metrics["eval_accuracy"])  # alpha 0: the base
    assert "## WiSE-FT" in (r.output_dir / "README.md").read_text()
    base = tf.CLIPModel.from_pretrained(dual_encoders["clip"]).state_dict()
    tuned = tf.CLIPModel.from_pretrained(r.output_dir).state_dict()
    out = hftl.export(r.output_dir, wise_ft=0.25)
    mixed = tf.CLIPModel.from_pretrained(out).state_dict()  # plain transformers loads it
    name = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.allclose(mixed[name], 0.75 * base[name] + 0.25 * tuned[name], atol=1e-6)
    report = json.loads((out / "export.json").read_text())
    assert report["alpha"] == 0.25 and set(report["scores"]) == {"fine-tuned", "wise-ft"}
    assert report["scores"]["fine-tuned"]["metrics"]["accuracy"] == pytest.approx(m["eval_accuracy"])
    with pytest.raises(HftlError, match="with --merge or --wise-ft, not --onnx"):
        hftl.export(r.output_dir, onnx=True)


def test_a_dual_encoder_built_from_a_vision_and_a_text_checkpoint(vit_dir, bert_dir, image_dirs, tmp_path,
                                                                    monkeypatch):
    """run_clip's route: {vision_model_name_or_path, text_model_name_or_path} -> a VisionTextDualEncoderModel with new
    (seeded) projections, assembled once into the cache; the run dir loads in plain transformers."""
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))
    model = {"vision_model_name_or_path": str(vit_dir), "text_model_name_or_path": str(bert_dir), "projection_dim": 8}
    recipe = zs_recipe(vit_dir, image_dirs, tmp_path / "out", training={"num_train_epochs": 2})
    recipe["model"] = model
    r = hftl.train(recipe)
    assert type(r.model).__name__ == "VisionTextDualEncoderModel" and r.model.config.projection_dim == 8
    assert r.plan.layer_map.head_depth == 4  # ViT's 2 blocks beside BERT's 2: embeddings, 2 blocks, post, head
    loaded = tf.VisionTextDualEncoderModel.from_pretrained(r.output_dir)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in r.model.state_dict().items())
    # the base is the same assembly (seeded projections): WiSE-FT at alpha 0 scores as the untrained pair
    base = hftl.train({**recipe, "training": {**recipe["training"], "num_train_epochs": 0,
                                              "output_dir": str(tmp_path / "base")}})
    assert r.metrics["wise_ft_0_accuracy"] == pytest.approx(base.metrics["eval_accuracy"])
    with pytest.raises(RecipeError, match="model_name_or_path or the vision/text pair, not both"):
        hftl.load_recipe({**recipe, "model": {**model, "model_name_or_path": str(vit_dir)}})
