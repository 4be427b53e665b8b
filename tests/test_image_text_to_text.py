"""`task: image-text-to-text` on tiny LLaVA, Idefics3 (SmolVLM) and Qwen2-VL models whose processors are built here,
saved and reloaded: the loss covers the assistant turns only, images expand before anything is counted and are
never cut, the vision tower stays bit-identical, the three parts have their depths, LoRA adapts the language model
only, the run loads in plain transformers / PEFT and answers as `hftl predict` does, and bad input is one clear
error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import transformers as tf
from lm_assets import write_jsonl
from vlm_assets import BUILDERS, colour_rows, square, write_colour_data

import hftl
from hftl.errors import HftlError
from hftl.tasks.generative import IGNORE

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_TOKENS = {"llava": 16, "idefics3": 4, "qwen2_vl": 4}  # per 32 px image, as each processor expands it


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_data(tmp_path_factory.mktemp("colours"))


def vlm_recipe(model_dir, files, out, **sections):
    recipe = {"task": "image-text-to-text", "model": {"model_name_or_path": str(model_dir)},
              "data": {"train_file": str(files["train"]), "validation_file": str(files["validation"]),
                       "max_seq_length": 96},
              "training": {"output_dir": str(out), "num_train_epochs": 25, "learning_rate": 1e-2,
                           "per_device_train_batch_size": 8, "per_device_eval_batch_size": 9, "logging_steps": 3,
                           "save_strategy": "no", "eval_strategy": "no", "dataloader_num_workers": 0},
              "generation": {"temperature": 0, "max_new_tokens": 4}, "seed": 0}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


def greedy(model, processor, row: dict, folder: Path) -> str:
    """Plain transformers: the chat template, the processor, greedy generate."""
    from PIL import Image

    text = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
    images = [[Image.open(folder / p).convert("RGB") for p in row["images"]]]
    inputs = processor(text=[text], images=images, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def prompts_file(data, name: str, n: int = 3) -> tuple[Path, list[dict]]:
    """The first validation rows without their answers, as `hftl predict` takes them (paths relative to the file)."""
    rows = [json.loads(line) for line in data["validation"].read_text().splitlines()[:n]]
    path = data["validation"].parent / f"prompts_{name}.jsonl"
    write_jsonl(path, [{"messages": r["messages"][:1], "images": r["images"]} for r in rows])
    return path, rows


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_the_loss_covers_the_assistant_turns_only(kind, vlms, colours, tmp_path):
    from conftest import prepared

    splits, processor, train, _, collate = prepared(vlm_recipe(vlms[kind], colours, tmp_path / "out"))
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for row, raw in zip(train, splits.train):
        labelled = [t for t, y in zip(row["input_ids"], row["labels"]) if y != IGNORE]
        assert labelled == [y for y in row["labels"] if y != IGNORE]
        answer = raw["messages"][1]["content"][0]["text"]
        assert processor.tokenizer.decode(labelled) == answer + "<|im_end|>\n"
        assert row["input_ids"].count(image_id) == IMAGE_TOKENS[kind]  # expanded before anything was counted
    batch = collate([train[0], train[1]])
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_training_learns_the_answers_and_the_run_loads_in_plain_transformers(kind, vlms, colours, tmp_path):
    """Random words end every prompt: a loss on them could not fall near 0. The vision tower stays bit-identical,
    the projector and the language model move; plain AutoModelForImageTextToText + AutoProcessor answer as hftl
    predict does."""
    base = tf.AutoModelForImageTextToText.from_pretrained(vlms[kind]).state_dict()
    r = hftl.train(vlm_recipe(vlms[kind], colours, tmp_path / "out"))
    assert r.metrics["eval_loss"] < 0.25, r.metrics
    parts = r.model.hftl_parts
    end = r.model.state_dict()

    def under(key, part):
        return key.startswith(part + ".")

    vision = [k for k in end if under(k, parts["vision"]) and not under(k, parts["projector"])]
    assert vision and all(torch.equal(end[k], base[k]) for k in vision)
    for part in ("projector", "language"):
        assert any(not torch.equal(end[k], base[k]) for k in end if under(k, parts[part]))
    assert parts["projector"] in (r.output_dir / "plan.md").read_text()

    prompts, rows = prompts_file(colours, kind)
    predicted = hftl.predict(r.output_dir, [str(prompts)])
    model = tf.AutoModelForImageTextToText.from_pretrained(r.output_dir).eval()
    processor = tf.AutoProcessor.from_pretrained(r.output_dir)
    folder = colours["validation"].parent
    assert [p["generated_text"] for p in predicted] == [greedy(model, processor, row, folder) for row in rows]
    assert [p["generated_text"] for p in predicted] == [row["messages"][1]["content"][0]["text"] for row in rows]
    # hftl eval: the same token-weighted loss as training's evaluation; the answers are short: exact match too
    prompts, rows = prompts_file(colours, kind + "_all", n=100)
    right = [p["generated_text"] == row["messages"][1]["content"][0]["text"]
             for p, row in zip(hftl.predict(r.output_dir, [str(prompts)]), rows)]
    scores = hftl.evaluate(r.output_dir)["members"][str(r.output_dir)]
    assert scores["eval_loss"] == pytest.approx(r.metrics["eval_loss"], rel=1e-4)
    assert scores["eval_exact_match"] == sum(right) / len(right)


def test_lora_adapts_the_language_model_only_and_loads_with_plain_peft(vlms, colours, tmp_path):
    from peft import PeftModel

    base_state = tf.AutoModelForImageTextToText.from_pretrained(vlms["llava"]).state_dict()
    r = hftl.train(vlm_recipe(vlms["llava"], colours, tmp_path / "out", peft={"method": "lora", "r": 8},
                              training={"learning_rate": 1e-2, "num_train_epochs": 15}))
    lora = [n for n, _ in r.model.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    config = json.loads((r.output_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.multi_modal_projector"]
    merged = r.model.merge_and_unload().state_dict()
    vision = [k for k in merged if k.startswith("model.vision_tower.")]
    assert vision and all(torch.equal(merged[k], base_state[k]) for k in vision)
    assert not torch.equal(merged["model.multi_modal_projector.linear_1.weight"],
                           base_state["model.multi_modal_projector.linear_1.weight"])
    prompts, rows = prompts_file(colours, "lora")
    predicted = [p["generated_text"] for p in hftl.predict(r.output_dir, [str(prompts)])]
    model = PeftModel.from_pretrained(tf.AutoModelForImageTextToText.from_pretrained(vlms["llava"]), r.output_dir).eval()
    processor = tf.AutoProcessor.from_pretrained(r.output_dir)
    assert predicted == [greedy(model, processor, row, colours["validation"].parent) for row in rows]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_the_three_parts_have_their_depths(kind, vlms, colours, tmp_path):
    """vision blocks < projector < language-model blocks < head; layer decay and gradual unfreezing reach all."""
    from hftl.training.setup import setup

    recipe = vlm_recipe(vlms[kind], colours, tmp_path / "out", model={"freeze_vision_tower": False},
                        strategy={"discriminative_lr": {"layer_decay": 0.5}})
    s = setup(hftl.load_recipe(recipe))
    lm, parts = s.plan.layer_map, s.model.hftl_parts
    depths = {k: {d for n, d in lm.depth.items() if n.startswith(parts[k] + ".")
                  and (k != "vision" or not n.startswith(parts["projector"] + "."))} for k in parts}
    assert max(depths["vision"]) < min(depths["projector"]) == max(depths["projector"]) < min(depths["language"])
    # between the vision input and the LM post norm: 2 vision blocks, the projector, the LM embeddings, 2 LM blocks
    assert lm.labels[min(depths["projector"])] == parts["projector"] and lm.num_blocks == 6
    lr = {n: a.lr for n, a in s.plan.lrs.items()}
    top_lm = next(n for n in lr if n.startswith(parts["language"] + ".") and lm.depth[n] == lm.head_depth - 2)
    proj = next(n for n in lr if n.startswith(parts["projector"] + "."))
    low_vision = next(n for n in lr if n.startswith(parts["vision"] + ".") and lm.depth[n] == 1)
    assert lr[low_vision] < lr[proj] < lr[top_lm]
    s = setup(hftl.load_recipe(vlm_recipe(vlms[kind], colours, tmp_path / "out2", model={"freeze_vision_tower": False},
                                          strategy={"gradual_unfreezing": {"every_epochs": 1}})))
    epoch = {d: 0 if when == "start" else int(when.split()[-1]) for d, when in s.plan.unfreeze_at.items()}
    assert epoch[max(epoch)] == 0 < epoch[min(depths["language"])] < epoch[min(depths["projector"])] < epoch[1]


def test_defaults_freeze_the_vision_tower_and_one_key_freezes_the_projector(vlms, colours, tmp_path):
    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(vlm_recipe(vlms["llava"], colours, tmp_path / "out")))
    active = s.plan.trainable.active
    assert not any(n.startswith("model.vision_tower.") for n in active)
    assert any(n.startswith("model.multi_modal_projector.") for n in active)
    assert any(n.startswith("model.language_model.") for n in active)
    s = setup(hftl.load_recipe(vlm_recipe(vlms["llava"], colours, tmp_path / "out",
                                          model={"freeze_multi_modal_projector": True, "freeze_language_model": False})))
    assert not any(n.startswith("model.multi_modal_projector.") for n in s.plan.trainable.active)


def test_long_examples_are_refused_with_their_row_or_dropped_and_counted(vlms, tmp_path, caplog):
    from conftest import prepared

    rows = colour_rows(tmp_path, 6, 0, noisy_prompt=False)
    rows[4]["messages"][0]["content"][1]["text"] += " and the cat sat on a mat and the dog ran to the park"
    data = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "v.jsonl", rows[:2])}
    short = len(prepared(vlm_recipe(vlms["llava"], data, tmp_path / "o"))[2][0]["input_ids"])
    with pytest.raises(HftlError, match=r"data.max_seq_length.*train row 4 is \d+ tokens once its images are expanded"):
        prepared(vlm_recipe(vlms["llava"], data, tmp_path / "o", data={"max_seq_length": short + 2}))
    with caplog.at_level(logging.WARNING, logger="hftl"):
        train = prepared(vlm_recipe(vlms["llava"], data, tmp_path / "o",
                                    data={"max_seq_length": short + 2, "long_examples": "drop"}))[2]
    assert len(train) == 5 and "1 of 6 train examples dropped" in caplog.text


def _bad(tmp_path, rows, name="train.jsonl"):
    return {"train": write_jsonl(tmp_path / name, rows), "validation": write_jsonl(tmp_path / ("v" + name), rows)}


def test_bad_input_is_one_clear_error_and_no_output_dir(vlms, gpt2_lm_dir, tmp_path):
    good = colour_rows(tmp_path, 2, 0)
    two = json.loads(json.dumps(good))
    two[1]["images"].append(two[1]["images"][0])
    missing = json.loads(json.dumps(good))
    missing[1]["images"] = ["images/nowhere.png"]
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
    corrupt = json.loads(json.dumps(good))
    corrupt[0]["images"] = ["images/broken.png"]
    no_token = tmp_path / "no_token"
    tokenizer = tf.AutoTokenizer.from_pretrained(vlms["llava"])
    tf.LlavaProcessor(image_processor=tf.AutoImageProcessor.from_pretrained(vlms["llava"]), patch_size=8,
                      tokenizer=tf.AutoTokenizer.from_pretrained(gpt2_lm_dir), image_token="<image>",
                      chat_template=tokenizer.chat_template or tf.AutoProcessor.from_pretrained(vlms["llava"]).chat_template
                      ).save_pretrained(no_token)
    tf.AutoModelForImageTextToText.from_pretrained(vlms["llava"]).save_pretrained(no_token)
    no_template = tmp_path / "no_template"
    tokenizer.chat_template = None
    tf.LlavaProcessor(image_processor=tf.AutoImageProcessor.from_pretrained(vlms["llava"]), patch_size=8,
                      tokenizer=tokenizer, vision_feature_select_strategy="default").save_pretrained(no_template)
    tf.AutoModelForImageTextToText.from_pretrained(vlms["llava"]).save_pretrained(no_template)
    cases = [
        (vlms["llava"], _bad(tmp_path, two, "two.jsonl"), "image-text-to-text",
         r"train row 1 has 1 image placeholder\(s\).*but 2 image\(s\) in column 'images'"),
        (vlms["llava"], _bad(tmp_path, missing, "m.jsonl"), "image-text-to-text", r"train row 1: image file .*nowhere.png' does not exist"),
        (vlms["llava"], _bad(tmp_path, corrupt, "c.jsonl"), "image-text-to-text", r"train row 0: .*broken.png' is not a readable image"),
        (gpt2_lm_dir, _bad(tmp_path, good, "g.jsonl"), "causal-lm", r"'images' column, and task causal-lm reads text only"),
        (no_token, _bad(tmp_path, good, "n.jsonl"), "image-text-to-text", r"has no image token \('<image>' is not in its vocabulary\)"),
        (no_template, _bad(tmp_path, good, "t.jsonl"), "image-text-to-text", r"has no chat template"),
    ]
    for i, (model, data, task, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(HftlError, match=message) as e:
            hftl.train({**vlm_recipe(model, data, out), "task": task,
                        **({"generation": None} if task == "causal-lm" else {})})
        assert "\n" not in str(e.value) and not out.exists()


def test_the_card_samples_fixed_prompts_with_their_images_base_beside_trained(vlms, colours, tmp_path):
    image = square(tmp_path / "red.png", "red")
    r = hftl.train(vlm_recipe(vlms["llava"], colours, tmp_path / "out", peft={"method": "lora", "r": 4},
                              generation={"prompts": ["what colour is it ?"], "images": [str(image)]},
                              training={"num_train_epochs": 1}))
    sample = json.loads((r.output_dir / "samples.jsonl").read_text())
    assert sample["prompt"] == "what colour is it ? [image: red.png]" and "base_completion" in sample
    assert "| what colour is it ? [image: red.png] |" in (r.output_dir / "README.md").read_text()
    with pytest.raises(HftlError, match="generation.images' lists 2 image"):
        hftl.train(vlm_recipe(vlms["llava"], colours, tmp_path / "o2",
                              generation={"prompts": ["a"], "images": [str(image), str(image)]}))
