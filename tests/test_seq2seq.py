"""seq2seq: source/target columns, labels shifted once (decoder_input_ids built by the model), generation-based
scores, hooks over encoder then decoder blocks, LoRA reload, CLI / accelerate."""

from __future__ import annotations

import json
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
def s2s_recipe(t5_dir, lm_files, tmp_path):
    def make(**sections):
        recipe = {
            "task": "seq2seq",
            "model": {"model_name_or_path": str(t5_dir)},
            "data": {"train_file": str(lm_files["copy_train"]), "validation_file": str(lm_files["copy_validation"]),
                     "max_source_length": 16, "max_target_length": 8},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 1, "learning_rate": 1e-2,
                         "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32, "logging_steps": 1,
                         "save_strategy": "no", "dataloader_num_workers": 0, "report_to": "none"},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


def test_columns_prefix_and_lengths(s2s_recipe):
    tok, train, _, _ = _prepared(s2s_recipe(data={"source_prefix": "reverse : ", "max_target_length": 2}))
    assert tok.decode(train[0]["input_ids"]).startswith("reverse : copy :")
    assert train[0]["input_ids"][-1] == tok.eos_token_id
    assert len(train[0]["labels"]) == 2  # cut at max_target_length


def test_labels_shifted_once_by_the_model(s2s_recipe, t5_dir):
    from transformers import AutoModelForSeq2SeqLM

    tok, train, _, collator = _prepared(s2s_recipe())
    batch = collator([train[i] for i in range(4)])
    assert "decoder_input_ids" not in batch  # built inside the model's forward, from the labels
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    labels = batch["labels"]
    # decoder input = labels shifted right once, starting from decoder_start_token_id, -100 as pad
    dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    dec = dec.masked_fill(dec == IGNORE, tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        hand = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec)
    keep = labels != IGNORE
    ce = torch.nn.functional.cross_entropy(hand.logits[keep], labels[keep])
    assert torch.allclose(out.loss, ce, atol=1e-6)


def test_text_scores_by_hand():
    from hftl.tasks.seq2seq import text_scores

    s = text_scores(["one two three", "four five"], ["one two three", "four six"])
    assert s["exact_match"] == 50.0
    assert s["rouge1"] == pytest.approx(100 * (1.0 + 0.5) / 2)  # second pair: P = R = 1/2
    assert s["gen_len"] == 2.5


def test_copy_task_is_learned_and_scored_by_generation(s2s_recipe, lm_files):
    import hftl

    r = hftl.train(s2s_recipe(training={"num_train_epochs": 12, "eval_strategy": "epoch"},
                              generation={"prompts": ["copy : one two three"], "max_new_tokens": 8, "temperature": 0}))
    evals = [h for h in r.trainer.state.log_history if "eval_rougeL" in h]
    assert evals[-1]["eval_rougeL"] > evals[0]["eval_rougeL"] + 20
    assert r.metrics["eval_rouge1"] > 50  # most digits right (their order is what a 2+2-layer T5 learns last)
    losses = [h["loss"] for h in r.trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.4 * losses[0]
    # the score is what generating with the saved model gives
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hftl.tasks.seq2seq import text_scores

    tok = AutoTokenizer.from_pretrained(r.output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(r.output_dir).eval()
    rows = [json.loads(x) for x in open(lm_files["copy_validation"])]
    enc = tok([x["text"] for x in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_length=8, num_beams=1, do_sample=False)
    mine = text_scores(tok.batch_decode(gen, skip_special_tokens=True), [x["summary"] for x in rows])
    assert mine["exact_match"] == pytest.approx(r.metrics["eval_exact_match"])
    assert mine["rougeL"] == pytest.approx(r.metrics["eval_rougeL"])
    card = (r.output_dir / "README.md").read_text()
    assert "pipeline_tag: text2text-generation" in card and "ROUGE-L" in card and "## Samples" in card
    # hftl predict generates what the saved model generates
    from hftl.runs.predict import predict

    [row] = predict(r.output_dir, ["copy : four five six"])
    with torch.no_grad():
        out = model.generate(**tok(["copy : four five six"], return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert row["generated_text"] == tok.decode(out[0], skip_special_tokens=True)


def test_layer_map_encoder_then_decoder_and_freezing_keeps_the_encoder(s2s_recipe, t5_dir):
    import hftl
    from transformers import AutoModelForSeq2SeqLM

    start = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    r = hftl.train(s2s_recipe(strategy={"freeze": {"below_depth": 3}}))
    lm = r.plan.layer_map
    assert lm.labels[1:5] == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    end = r.model.state_dict()
    for name, before in start.state_dict().items():
        if name.startswith("encoder.block.") or name == "shared.weight":
            assert torch.equal(end[name], before), name  # frozen: bit-identical
    assert not torch.equal(end["decoder.block.1.layer.0.SelfAttention.q.weight"],
                           start.state_dict()["decoder.block.1.layer.0.SelfAttention.q.weight"])


def test_discriminative_lr_over_encoder_and_decoder(s2s_recipe):
    import hftl

    r = hftl.train(s2s_recipe(strategy={"discriminative_lr": {"layer_decay": 0.5}}))
    lm = r.plan.layer_map
    by_depth = {lm.depth[n]: r.plan.lrs[n].lr for n in r.plan.lrs}
    assert by_depth[4] == pytest.approx(1e-2 * 0.5 ** (lm.head_depth - 4))
    assert by_depth[1] == pytest.approx(1e-2 * 0.5 ** (lm.head_depth - 1))
    lrs = sorted({g["initial_lr"] for g in r.trainer.optimizer.param_groups if g["params"]})
    assert lrs == pytest.approx(sorted(set(by_depth.values())))


def test_lora_seq2seq_adapter_reloads_with_the_same_logits(s2s_recipe):
    import hftl
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoTokenizer

    r = hftl.train(s2s_recipe(peft={"method": "lora", "r": 4}, training={"num_train_epochs": 2}))
    config = json.loads((r.output_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and not config["modules_to_save"]
    assert set(config["target_modules"]) == {"q", "v"}
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    enc = tok(["copy : one two three"], return_tensors="pt")
    dec = torch.tensor([[0, 4, 5]])
    reloaded = AutoPeftModelForSeq2SeqLM.from_pretrained(r.output_dir).eval()
    with torch.no_grad():
        a = reloaded(**enc, decoder_input_ids=dec).logits
        b = r.model.eval()(**enc, decoder_input_ids=dec).logits
    assert (a - b).abs().max() < 1e-5


def test_bad_summary_column_names_the_key(s2s_recipe):
    with pytest.raises(HftlError, match=r"data.summary_column.*'abstract' not in the data; columns are: text, summary"):
        _prepared(s2s_recipe(data={"summary_column": "abstract"}))


def test_empty_target_is_refused(s2s_recipe, tmp_path):
    from lm_assets import write_jsonl

    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "copy : one", "summary": ""}] * 4)
    with pytest.raises(HftlError, match=r"Column 'summary' \(data.summary_column\) has an empty value at train row 0"):
        _prepared(s2s_recipe(data={"train_file": str(path)}))


@pytest.mark.slow
def test_cli_and_accelerate_launch(s2s_recipe, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(s2s_recipe()))
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "train", str(recipe), "peft.method=lora"],
                         capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "eval_rougeL" in json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "hftl" / "run.py"), str(recipe),
         f"training.output_dir={tmp_path / 'launched'}"],
        capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert "eval_exact_match" in json.loads((tmp_path / "launched" / "metrics.json").read_text())
