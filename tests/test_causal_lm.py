"""causal-lm: data formats and their loss masks, the traps (tied head, pad = eos, labels shifted once, padding
side, LoRA targets and modules_to_save), hooks, samples, the card's code, CLI / accelerate / DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, child_env, merge_sections, prepared
from hftl.errors import HftlError

IGNORE = -100


def _prepared(recipe: dict):
    """(tokenizer, train, validation, collator) as the pipeline builds them."""
    return prepared(recipe)[1:]


@pytest.fixture
def lm_recipe(gpt2_lm_dir, lm_files, tmp_path):
    def make(model_dir=None, train="text", **sections):
        recipe = {
            "task": "causal-lm",
            "model": {"model_name_or_path": str(model_dir or gpt2_lm_dir)},
            "data": {"train_file": str(lm_files[train]), "max_seq_length": 32},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 1, "learning_rate": 5e-3,
                         "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "logging_steps": 1,
                         "save_strategy": "no", "dataloader_num_workers": 0, "report_to": "none"},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


def _hand_loss(logits, labels):
    """Next-token cross-entropy computed by hand: position t predicts label t + 1 (one shift), -100 skipped."""
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    keep = shift_labels != IGNORE
    return torch.nn.functional.cross_entropy(shift_logits[keep].float(), shift_labels[keep])


# ----------------------------------------------------------------------------------------------- data and masks


def test_prompt_tokens_are_excluded_from_the_loss(lm_recipe):
    tok, train, _, collator = _prepared(lm_recipe(train="qa"))
    prompt = tok("what colour is the sky ?")["input_ids"]
    row = next(r for r in train if r["input_ids"][:len(prompt)] == prompt)
    completion = tok(" blue", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == prompt + completion
    assert row["labels"] == [IGNORE] * len(prompt) + completion
    # the model's loss is the completion tokens' alone: equal to a hand computation that sees only them, and
    # unchanged by whatever the prompt tokens would have been labelled with
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_recipe()["model"]["model_name_or_path"]).eval()
    batch = collator([train[i] for i in range(4)])
    with torch.no_grad():
        out = model(**batch)
    assert torch.allclose(out.loss, _hand_loss(out.logits, batch["labels"]), atol=1e-6)
    full = batch["labels"].clone()
    full[batch["attention_mask"].bool()] = batch["input_ids"][batch["attention_mask"].bool()]
    with torch.no_grad():
        assert not torch.allclose(model(**{**batch, "labels": full}).loss, out.loss)


def test_labels_are_shifted_by_the_model_once(lm_recipe, gpt2_lm_dir):
    from transformers import AutoModelForCausalLM

    _, train, _, collator = _prepared(lm_recipe())
    batch = collator([train[0], train[1]])
    assert torch.equal(batch["labels"][batch["attention_mask"].bool()], batch["input_ids"][batch["attention_mask"].bool()])
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm_dir).eval()
    with torch.no_grad():
        out = model(**batch)
    assert torch.allclose(out.loss, _hand_loss(out.logits, batch["labels"]), atol=1e-6)
    # shifting twice (labels pre-shifted by the data) would score position t against token t + 2
    twice = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], IGNORE)], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model(**{**batch, "labels": twice}).loss, out.loss)


def test_missing_pad_token_uses_eos_and_eos_still_trains(lm_recipe, gpt2_lm_dir):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(gpt2_lm_dir).pad_token is None  # GPT-2 style
    tok, train, _, collator = _prepared(lm_recipe(train="qa"))
    assert tok.pad_token_id == tok.eos_token_id
    rows = sorted(train, key=lambda r: len(r["input_ids"]))[:1] + sorted(train, key=lambda r: -len(r["input_ids"]))[:1]
    batch = collator(rows)
    short = 0
    n = len(rows[short]["input_ids"])
    assert batch["input_ids"][short, n:].eq(tok.eos_token_id).all()  # padding is the eos id ...
    assert batch["labels"][short, n:].eq(IGNORE).all()  # ... but never reaches the loss
    assert batch["labels"][short, n - 1] == tok.eos_token_id  # the document's own eos does (the model learns to stop)
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_conversations_train_on_assistant_turns_only(lm_recipe):
    tok, train, _, _ = _prepared(lm_recipe(train="chat", data={"max_seq_length": 128}))
    row = next(r for r in train if "sky" in tok.decode(r["input_ids"]))
    learned = tok.decode([t for t in row["labels"] if t != IGNORE])
    assert learned == "blue<|im_end|>\nred<|im_end|>\n<|endoftext|>"
    text = tok.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nbe short<|im_end|>\n<|im_start|>user\nwhat colour is the sky ?")


def test_packing_cuts_full_blocks_and_keeps_the_prompt_mask(lm_recipe):
    _, plain, _, _ = _prepared(lm_recipe(train="qa", data={"max_seq_length": 64}))
    _, packed, _, _ = _prepared(lm_recipe(train="qa", data={"max_seq_length": 16, "packing": True}))
    assert {len(r) for r in packed["input_ids"]} == {16}
    flat = lambda col: [t for seq in col for t in seq]  # noqa: E731
    n = 16 * len(packed)
    assert flat(packed["input_ids"]) == flat(plain["input_ids"])[:n]
    assert flat(packed["labels"]) == flat(plain["labels"])[:n]  # -100 stays on prompt tokens across block cuts


def test_txt_files_one_document_per_line_or_paragraph(lm_recipe, lm_files):
    tok, by_line, _, _ = _prepared(lm_recipe(data={"train_file": str(lm_files["story"])}))
    assert tok.decode(by_line[0]["input_ids"]) == "the cat sat on the mat . the dog ran to the park .<|endoftext|>"
    from hftl.data import load_splits
    from hftl.recipe import load_recipe
    from hftl.tasks import get_task

    r = load_recipe(lm_recipe(data={"train_file": str(lm_files["paragraphs"]), "sample_by": "paragraph",
                                    "train_val_split": 0.34}))
    splits = load_splits(r.data, 0, get_task("causal-lm"))
    texts = sorted(t.strip() for t in [*splits.train["text"], *splits.validation["text"]])
    assert texts == ["the cat sat\non the mat", "the dog ran", "to the park"]


# ----------------------------------------------------------------------------------------------- training


def test_loss_falls_well_below_its_start_and_perplexity_is_exp_loss(lm_recipe):
    import hftl

    r = hftl.train(lm_recipe(training={"num_train_epochs": 8, "learning_rate": 1e-2}, peft=None))
    losses = [h["loss"] for h in r.trainer.state.log_history if "loss" in h]
    assert r.metrics["eval_loss"] < 0.25 * losses[0]
    assert r.metrics["eval_perplexity"] == pytest.approx(math.exp(r.metrics["eval_loss"]), rel=1e-6)
    saved = json.loads((r.output_dir / "metrics.json").read_text())
    assert saved["eval_perplexity"] == pytest.approx(r.metrics["eval_perplexity"])


def test_eval_loss_is_the_token_mean_whatever_the_eval_batch_size(lm_recipe, tmp_path):
    """Trap: the Trainer's eval_loss is a mean of batch means, so it (and the perplexity from it) moved with
    per_device_eval_batch_size. hftl weighs each batch by its label tokens: the hand-computed token mean."""
    import hftl

    from lm_assets import WORDS, write_jsonl

    rows = [{"text": " ".join(WORDS[: 1 + (7 * i) % 18])} for i in range(40)]  # 1 to 18 words
    data = {"train_file": str(write_jsonl(tmp_path / "lengths.jsonl", rows))}
    runs = [hftl.train(lm_recipe(data=data, training={"max_steps": 2, "per_device_eval_batch_size": bs,
                                                      "output_dir": str(tmp_path / f"bs{bs}")})) for bs in (1, 7)]
    r = runs[0]
    total = count = 0.0
    model = r.model.eval()
    with torch.no_grad():
        for row in r.trainer.eval_dataset:
            batch = r.trainer.data_collator([row])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(_hand_loss(logits, batch["labels"])) * n
            count += n
    assert len({len(row["input_ids"]) for row in r.trainer.eval_dataset}) > 1  # rows of several lengths
    assert r.metrics["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert runs[1].metrics["eval_loss"] == pytest.approx(r.metrics["eval_loss"], rel=1e-5)
    assert runs[1].metrics["eval_perplexity"] == pytest.approx(math.exp(r.metrics["eval_loss"]), rel=1e-5)


def test_tied_head_freezes_with_the_embeddings_and_the_plan_says_so(lm_recipe):
    import hftl
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(lm_recipe()["model"]["model_name_or_path"])
    r = hftl.train(lm_recipe(strategy={"freeze": {"below_depth": 1}}))
    model = r.model
    assert model.lm_head.weight is model.transformer.wte.weight  # still one parameter
    assert torch.equal(model.lm_head.weight, start.lm_head.weight)  # frozen with the embeddings, not trained as "head"
    assert not torch.equal(model.transformer.h[1].mlp.c_fc.weight, start.transformer.h[1].mlp.c_fc.weight)
    plan = (r.output_dir / "plan.md").read_text()
    assert "| head | lm_head (tied to transformer.wte) | 0 (tied) | with depth 0 |" in plan
    assert "lm_head.weight is transformer.wte.weight" in plan and "stays frozen with them" in plan
    # freezing "the backbone" would freeze the tied head too: refused, naming the tie
    with pytest.raises(HftlError, match=r"lm_head.weight is tied to transformer.wte.weight.*strategy.unfreeze"):
        hftl.plan(lm_recipe(strategy={"freeze": "backbone"}))


def test_unfrozen_tied_weight_trains_as_embeddings_and_head_at_once(lm_recipe, gpt2_lm_dir):
    import hftl
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(gpt2_lm_dir)
    r = hftl.train(lm_recipe())
    assert not torch.equal(r.model.lm_head.weight, start.lm_head.weight)
    reloaded = AutoModelForCausalLM.from_pretrained(r.output_dir)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    assert torch.equal(reloaded.lm_head.weight, r.model.lm_head.weight)
    assert "it trains with them" in (r.output_dir / "plan.md").read_text()


def test_discriminative_lr_and_gradual_unfreezing_reach_the_decoder_blocks(lm_recipe):
    import hftl

    recipe = lm_recipe(strategy={"discriminative_lr": {"layer_decay": 0.5}, "gradual_unfreezing": {"every_epochs": 1}},
                       training={"num_train_epochs": 2, "learning_rate": 1e-2})
    r = hftl.train(recipe)
    lm = r.plan.layer_map
    assert lm.labels[1:3] == ["h.0", "h.1"] and lm.head_depth == 4
    groups = {g["name"]: g["initial_lr"] for g in r.trainer.optimizer.param_groups if g["params"]}  # before the schedule
    depth_lr = {lm.depth[n]: r.plan.lrs[n].lr for n in r.plan.lrs}
    assert depth_lr[3] == pytest.approx(1e-2 * 0.5) and depth_lr[2] == pytest.approx(1e-2 * 0.25)
    assert depth_lr[1] == pytest.approx(1e-2 * 0.125) and depth_lr[0] == pytest.approx(1e-2 * 0.0625)
    assert sorted(groups.values()) == pytest.approx([1e-2 * 0.5 ** k for k in (4, 3, 2, 1)])  # the optimizer's too
    # the top of the stack (post: ln_f) trains from the start, block h.1 from epoch 1; nothing is left frozen at
    # depth 4 (the tied head has no parameter of its own)
    assert r.plan.unfreeze_at[3] == "start" and r.plan.unfreeze_at[2] == "epoch 1"


def test_reinit_top_block(lm_recipe, gpt2_lm_dir):
    from transformers import AutoModelForCausalLM

    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    start = AutoModelForCausalLM.from_pretrained(gpt2_lm_dir)
    s = setup(load_recipe(lm_recipe(strategy={"reinit": {"from_depth": 2}})))
    assert not torch.equal(s.model.transformer.h[1].attn.c_attn.weight, start.transformer.h[1].attn.c_attn.weight)
    assert torch.equal(s.model.transformer.h[0].attn.c_attn.weight, start.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(s.model.transformer.wte.weight, start.transformer.wte.weight)  # the tied head is not re-drawn


# ----------------------------------------------------------------------------------------------- LoRA


def _logits(model, tok, text="the cat sat on"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**ids).logits


@pytest.mark.parametrize("arch, targets", [("gpt2", ["c_attn"]), ("llama", ["q_proj", "v_proj"])])
def test_lora_targets_read_from_the_model_and_adapter_reloads(arch, targets, lm_recipe, llama_dir, gpt2_lm_dir):
    import hftl
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model_dir = llama_dir if arch == "llama" else gpt2_lm_dir
    r = hftl.train(lm_recipe(model_dir, peft={"method": "lora", "r": 4}, training={"num_train_epochs": 2}))
    config = json.loads((r.output_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == targets
    assert not config["modules_to_save"]  # the pretrained LM head is not a new head: nothing saved beside the adapter
    assert config["task_type"] == "CAUSAL_LM"
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(r.output_dir)
    assert (_logits(reloaded, tok) - _logits(r.model, tok)).abs().max() < 1e-5


def test_new_special_tokens_grow_the_vocabulary_and_save_the_embeddings(lm_recipe, gpt2_lm_dir):
    import hftl
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    r = hftl.train(lm_recipe(model={"extra_special_tokens": ["<|tool|>"]}, peft={"method": "lora", "r": 4}))
    config = json.loads((r.output_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["transformer.wte"]  # tied: the head follows (ensure_weight_tying)
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    assert len(tok) == len(AutoTokenizer.from_pretrained(gpt2_lm_dir)) + 1
    reloaded = AutoPeftModelForCausalLM.from_pretrained(r.output_dir)  # resizes the base to the saved tokenizer
    assert (_logits(reloaded, tok, "the <|tool|> cat") - _logits(r.model, tok, "the <|tool|> cat")).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------- outputs


def test_samples_card_and_left_padded_generation(lm_recipe):
    import hftl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["the cat", "the dog ran to"]
    r = hftl.train(lm_recipe(training={"num_train_epochs": 4},
                             generation={"prompts": prompts, "max_new_tokens": 6, "temperature": 0}))
    rows = [json.loads(line) for line in (r.output_dir / "samples.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in rows] == prompts
    card = (r.output_dir / "README.md").read_text()
    assert "## Samples" in card and rows[1]["completion"].strip().replace("|", "\\|") in card
    assert "pipeline_tag: text-generation" in card and "perplexity" in card
    # the saved tokenizer pads on the left: a batch generates what each prompt generates alone
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    model = AutoModelForCausalLM.from_pretrained(r.output_dir).eval()
    assert tok.padding_side == "left"
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    for i, p in enumerate(prompts):
        alone = model.generate(**tok(p, return_tensors="pt"), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        assert tok.decode(alone[0], skip_special_tokens=True) == tok.decode(together[i], skip_special_tokens=True)
    assert tok.decode(alone[0][-6:], skip_special_tokens=True) == rows[1]["completion"]  # what the card shows
    # the card's code runs as written
    code = card.split("```python\n")[1].split("```")[0]
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_adapter_run_samples_base_and_trained_side_by_side(lm_recipe, gpt2_lm_dir):
    import hftl
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = hftl.train(lm_recipe(peft={"method": "lora", "r": 4}, training={"num_train_epochs": 3},
                             generation={"prompts": ["the cat"], "max_new_tokens": 5, "temperature": 0}))
    row = json.loads((r.output_dir / "samples.jsonl").read_text())
    assert set(row) == {"prompt", "completion", "base_completion"}
    assert "| prompt | base model | this model |" in (r.output_dir / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    ids = tok("the cat", return_tensors="pt")

    def greedy(model):
        out = model.eval().generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)

    assert row["base_completion"] == greedy(AutoModelForCausalLM.from_pretrained(gpt2_lm_dir))  # the adapter off
    assert row["completion"] == greedy(AutoPeftModelForCausalLM.from_pretrained(r.output_dir))


# ----------------------------------------------------------------------------------------------- launchers


@pytest.mark.slow
def test_cli_and_accelerate_launch(lm_recipe, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(lm_recipe(train="qa")))
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "train", str(recipe), "training.num_train_epochs=2"],
                         capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "eval_perplexity" in json.loads((tmp_path / "out" / "metrics.json").read_text())
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "hftl" / "run.py"), str(recipe),
         f"training.output_dir={tmp_path / 'launched'}"],
        capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert (tmp_path / "launched" / "model.safetensors").is_file()


DDP_SCRIPT = r"""
import hashlib, json, sys, torch, hftl
from transformers import TrainerCallback
class Start(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = {n: t.detach().clone() for n, t in model.state_dict().items()}
cb = Start()
r = hftl.train(json.loads(sys.argv[1]), callbacks=[cb])
end = r.model.state_dict()
json.dump({"world_size": r.trainer.args.world_size,
           "digest": {n: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for n, t in end.items()},
           "changed": {n: not torch.equal(cb.start[n], end[n]) for n in end},
           "loss": [h["loss"] for h in r.trainer.state.log_history if "loss" in h], "metrics": r.metrics},
          open(f"{sys.argv[2]}/rank{r.trainer.args.process_index}.json", "w"))
"""


@pytest.mark.slow
def test_ddp_two_processes_lora_gpt2(lm_recipe, tmp_path):
    script = tmp_path / "ddp_lm.py"
    script.write_text(DDP_SCRIPT)
    recipe = lm_recipe(train="qa", peft={"method": "lora", "r": 4},
                       training={"num_train_epochs": 3, "per_device_train_batch_size": 4, "use_cpu": True})
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
         json.dumps(recipe), str(tmp_path)], capture_output=True, text=True, env=child_env(), timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks drifted apart"
    changed = ranks[0]["changed"]
    assert all(changed[n] for n in changed if "lora_B" in n)
    assert not any(changed[n] for n in changed if "lora" not in n)  # the base model, head included, is untouched
    assert ranks[0]["loss"][-1] < ranks[0]["loss"][0]
    assert ranks[0]["metrics"]["eval_perplexity"] == pytest.approx(math.exp(ranks[0]["metrics"]["eval_loss"]), rel=1e-6)


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("rows, match", [
    ([{"body": "a"}] * 8, r"no column 'text'.*'prompt' \+ 'completion'.*'messages'"),
    ([{"prompt": "a", "completion": ""}] * 8, r"Column 'completion' has an empty value at train row 0"),
    ([{"prompt": "a"}] * 8, r"'prompt' column but no 'completion'"),
    ([{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 8,
     r"unknown role 'robot'; allowed: system, user, assistant, tool"),
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 8, r"no assistant turn"),
])
def test_bad_data_is_one_clear_error(rows, match, lm_recipe, tmp_path):
    from lm_assets import write_jsonl

    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(HftlError, match=match):
        _prepared(lm_recipe(data={"train_file": str(path)}))


def test_messages_need_a_chat_template(lm_recipe, gpt2_nochat_dir):
    with pytest.raises(HftlError, match="'messages' column but the tokenizer of this model has no chat template"):
        _prepared(lm_recipe(gpt2_nochat_dir, train="chat"))


def test_generation_block_is_refused_for_classification(text_recipe):
    from hftl.errors import RecipeError
    from hftl.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"'generation' is read by task causal-lm, seq2seq and image-text-to-text only"):
        load_recipe(text_recipe(generation={"prompts": ["hi"]}))


# ----------------------------------------------------------------------------------------------- after training


def test_predict_generates_what_the_saved_model_generates(lm_recipe, tmp_path):
    import hftl
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from hftl.runs.predict import predict

    r = hftl.train(lm_recipe(model={"extra_special_tokens": ["<|tool|>"]}, peft={"method": "lora", "r": 4},
                             training={"num_train_epochs": 2},
                             generation={"prompts": ["the cat"], "max_new_tokens": 5, "temperature": 0}))
    rows = predict(r.output_dir, ["the cat", "the <|tool|> dog"])  # the adapter loads on a base grown to the tokenizer
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    model = AutoPeftModelForCausalLM.from_pretrained(r.output_dir).eval()
    for row in rows:
        ids = tok(row["input"], return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert row["generated_text"] == tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert rows[0]["generated_text"] == json.loads((r.output_dir / "samples.jsonl").read_text())["completion"]
    # what does not apply to a text-writing run says so
    with pytest.raises(HftlError, match=r"hftl eval scores class predictions.*causal-lm run.*metrics.json"):
        hftl.evaluate(r.output_dir)
    with pytest.raises(HftlError, match=r"causal-lm run: hftl exports it with --merge or --gguf, not --onnx"):
        hftl.export(r.output_dir, onnx=True)
    with pytest.raises(HftlError, match="Ensembles average class probabilities"):
        predict([r.output_dir, r.output_dir], ["the cat"])
    merged = hftl.export(r.output_dir, merge=True)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = tok("the <|tool|> cat", return_tensors="pt")
    with torch.no_grad():
        assert (plain(**ids).logits - model(**ids).logits).abs().max() < 1e-4


def test_length_sorted_micro_batches_give_the_whole_batch_update(lm_recipe, one_thread):
    """speed.micro_batch with a loss normalised by the batch's tokens (num_items_in_batch)."""
    from test_speed import same_update

    same_update(lm_recipe(train="qa"))  # prompts masked: a different number of loss tokens per row
