"""`hftl export RUN --gguf`: a tiny Llama LoRA run merged and written as GGUF (f16 and q8_0), read back by
transformers' own GGUF loader (an independent reader: names, Q/K layout, tokenizer) and compared logit by logit;
Qwen2 / Qwen3 layouts; refusals with nothing written. The file against llama.cpp itself: a test that runs where
llama-cpp-python is installed, and benchmarks/gguf_export.py on SmolLM2 (results/gguf_export.md). SmolLM2's
vocabulary against the GGUF llama.cpp wrote for it: tests/test_zoo.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hftl
from conftest import ROOT, child_env
from hftl.errors import HftlError
from hftl.runs import gguf as hgguf

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_run(llama_dir, lm_files, tmp_path_factory):
    """A Llama (grouped-query attention, tied embeddings) with a LoRA adapter on every linear layer, trained on
    the toy story until it has learnt something."""
    out = tmp_path_factory.mktemp("gguf") / "run"
    hftl.train({"task": "causal-lm", "model": {"model_name_or_path": str(llama_dir)},
                "data": {"train_file": str(lm_files["text"]), "max_seq_length": 32},
                "peft": {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
                "generation": {"prompts": ["the cat", "the dog ran"], "max_new_tokens": 12},
                "training": {"output_dir": str(out), "num_train_epochs": 2, "learning_rate": 5e-2,
                             "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none"},
                "seed": 0})
    return out


def _merged(run_dir):
    from hftl.runs.export import merged_copy

    return merged_copy(hftl.load_model(run_dir)).float().eval()


def _reload(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_run_to_gguf_f16_gives_the_merged_logits(lora_run):
    import gguf

    target = hftl.export(lora_run, gguf=True)
    assert target == lora_run / "exported-gguf"
    numbers = json.loads((target / "export.json").read_text())
    path = target / "model-f16.gguf"
    assert numbers["file"] == path.name and numbers["architecture"] == "llama"
    assert numbers["same_tokens"] == numbers["prompts"] == 2 and numbers["same_split"] == 2
    assert [r["prompt"] for r in numbers["rows"]] == ["the cat", "the dog ran"]  # the recipe's prompts
    assert "2 of 2 identical" in (target / "export.md").read_text()
    assert (target / "recipe.yaml").is_file()
    with pytest.raises(HftlError, match="is a GGUF export .* run it in llama.cpp"):
        hftl.predict(target, ["the cat"])

    merged = _merged(lora_run)
    ids = torch.tensor([[5, 17, 40, 2, 99, 120, 7, 64, 33, 1]])
    ours, theirs = _logits(merged, ids), _logits(_reload(path), ids)
    assert (ours - theirs).abs().max() < 2e-2 * ours.abs().max()  # f16 weights
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.merges")}
    tok = hftl.runs.load.load_processor(hftl.runs.load.read_run(lora_run))
    assert fields["tokenizer.ggml.tokens"] == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert fields["tokenizer.ggml.pre"] == "gpt-2" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False  # the tokenizer adds none
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.block_count"] == 2
    assert fields["tokenizer.chat_template"] == tok.chat_template
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in kinds  # tied: llama.cpp reuses token_embd
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["blk.0.attn_q.weight"] == "F16"
    assert kinds["token_embd.weight"] == "F16"


def test_q8_0_quantizes_the_matrices_and_stays_close(lora_run, tmp_path):
    target = hftl.export(lora_run, gguf=True, quant="q8_0", to=tmp_path / "q8")
    path = target / "model-q8_0.gguf"
    numbers = json.loads((target / "export.json").read_text())
    assert numbers["tensor_types"] == {"F32": 5, "Q8_0": 15}  # 2 x 2 norms + the final one; 2 x 7 matrices + embeddings
    merged = _merged(lora_run)
    ids = torch.tensor([[5, 17, 40, 2, 99, 120, 7, 64]])
    ours, theirs = _logits(merged, ids), _logits(_reload(path), ids)
    assert (ours - theirs).abs().max() < 0.1 * ours.abs().max()


def test_without_the_q_k_permutation_the_logits_differ(lora_run, tmp_path, monkeypatch):
    """The check above can fail: rows left in HF's rotate-half order give other logits in a GGUF reader."""
    monkeypatch.setattr(hgguf, "_permute", lambda w, n_head: w)
    merged = _merged(lora_run)
    tok = hftl.runs.load.load_processor(hftl.runs.load.read_run(lora_run))
    path = tmp_path / "m.gguf"
    hgguf.write_gguf(merged, tok, path, "f16", "m")
    ids = torch.tensor([[5, 17, 40, 2, 99, 120, 7, 64]])
    ours, theirs = _logits(merged, ids), _logits(_reload(path), ids)
    assert (ours - theirs).abs().max() > 0.1 * ours.abs().max()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_layouts(arch, tmp_path):
    """Qwen2 (q/k/v biases, no permutation) and Qwen3 (per-head q/k norms) write and read back."""
    from lm_assets import byte_bpe
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_bpe(chat=True)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, tie_word_embeddings=False)
    # Qwen3 keeps its default head_dim (128, not hidden / heads): transformers' GGUF reader does not read it back
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms and biases away from their init, so a misplaced one shows
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "m.gguf"
    written = hgguf.write_gguf(model, tok, path, "f16", "m")
    assert written["architecture"] == arch
    ids = torch.tensor([[5, 17, 40, 2, 99, 120, 7, 64]])
    ours, theirs = _logits(model, ids), _logits(_reload(path), ids)
    assert (ours - theirs).abs().max() < 2e-2 * ours.abs().max()


def test_refusals_leave_nothing(tmp_path, gpt2_lm_dir, lm_files, llama_dir):
    gpt2_run = tmp_path / "gpt2"
    hftl.train({"task": "causal-lm", "model": {"model_name_or_path": str(gpt2_lm_dir)},
                "data": {"train_file": str(lm_files["text"]), "max_seq_length": 32, "max_train_samples": 8},
                "training": {"output_dir": str(gpt2_run), "max_steps": 1, "save_strategy": "no",
                             "report_to": "none", "per_device_train_batch_size": 4}})
    with pytest.raises(HftlError, match=r"llama, mistral, qwen2, qwen3 .* not 'gpt2' .*convert_hf_to_gguf"):
        hftl.export(gpt2_run, gguf=True)
    assert not (gpt2_run / "exported-gguf").exists()
    with pytest.raises(HftlError, match="must be one of f16, q8_0, not 'q4'"):
        hftl.export(gpt2_run, gguf=True, quant="q4")

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1}, unk_token="a"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(HftlError, match="byte-level BPE tokenizers .* this one is a WordLevel tokenizer"):
        hgguf.pre_tokenizer(PreTrainedTokenizerFast(tokenizer_object=words))
    split = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    split.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "isolated"),
                                                   pre_tokenizers.ByteLevel(use_regex=False)])
    with pytest.raises(HftlError, match=r"pre-tokenizer \(Split \+ ByteLevel\) is none of"):
        hgguf.pre_tokenizer(PreTrainedTokenizerFast(tokenizer_object=split))
    config = AutoConfig.from_pretrained(llama_dir)
    config.rope_parameters = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}
    from lm_assets import byte_bpe
    with pytest.raises(HftlError, match="rope_type 'llama3'"):
        hgguf.check_supported(config, byte_bpe(chat=False))


def test_cli_quant_needs_gguf(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hftl.cli", "export", str(tmp_path), "--merge", "--quant", "q8_0"],
                       capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert r.returncode == 1 and "--quant goes with --gguf" in r.stderr and "Traceback" not in r.stderr


def test_llama_cpp_runs_the_file_with_the_same_greedy_tokens(lora_run, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (benchmarks/gguf_export.py runs this "
                                            "check on SmolLM2 + LoRA)")
    target = hftl.export(lora_run, gguf=True, to=tmp_path / "f16")
    numbers = json.loads((target / "export.json").read_text())
    assert numbers["reader"].startswith("llama.cpp")
    assert numbers["same_tokens"] == numbers["prompts"] and numbers["same_split"] == numbers["prompts"]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_cpp_computes_the_logits_of_each_architecture(arch, tmp_path):
    """Each architecture hftl writes, run in llama.cpp: logits within f16 rounding of transformers' (Qwen3 with
    head_dim != hidden / heads, which llama.cpp reads from key_length)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import numpy as np
    from llama_cpp import Llama
    from lm_assets import byte_bpe
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_bpe(chat=True)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, tie_word_embeddings=arch == "llama",
                                  **({"head_dim": 32} if arch == "qwen3" else {}))
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path = tmp_path / "m.gguf"
    hgguf.write_gguf(model, tok, path, "f16", arch)
    ids = tok("one two three what is the colour of")["input_ids"]
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    llm.close()
    ours = _logits(model, torch.tensor([ids]))[0].numpy()
    assert np.abs(theirs - ours).max() < 0.02 * np.abs(ours).max()  # measured: 0.3-0.6% (f16 weights)
