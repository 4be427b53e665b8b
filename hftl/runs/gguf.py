"""GGUF export of a causal-LM run (`hftl export RUN --gguf [--quant f16|q8_0]`): one file for llama.cpp, Ollama and
LM Studio. An adapter run is merged first.

Written with the `gguf` package (llama.cpp's own Python library: the tensor names, key names and quantizers) the way
llama.cpp's convert_hf_to_gguf.py writes the architectures in ARCHS: the same hyper-parameter keys, Q and K rows
permuted back to llama.cpp's rotary layout for Llama, 1-D tensors (norms, biases) kept F32, and for q8_0 every
matrix whose rows split into blocks of 32 quantized (the others F16). The tokenizer goes in as llama.cpp's `gpt2`
(byte-level BPE) vocabulary, its pre-tokenizer named as llama.cpp knows it (PRE_TOKENIZERS).

The file is checked before it is kept: greedy tokens on a few prompts, from the file against the run's model in
transformers. The file is run in llama.cpp (llama-cpp-python) when that is installed, otherwise read back through
transformers' own GGUF loader, an independent reader of the names, layout and tokenizer.
"""

from __future__ import annotations

import json
import os
import tempfile
from hashlib import sha256
from pathlib import Path

from hftl.errors import HftlError
from hftl.model import transformers_errors_only

QUANTS = ("f16", "q8_0")
# model_type -> (llama.cpp architecture, Q/K rows permuted to llama.cpp's rotary layout), as convert_hf_to_gguf.py.
ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}
# llama.cpp's names for byte-level BPE pre-tokenizers, by the sha256 of the token ids of its test text
# (convert_hf_to_gguf.py, get_vocab_base_pre) ...
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
          "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
          "?我想在apple工作1314151天～ ------======= "
          "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
          "sure I'll make it, 'D you like some tea? We'Ve a'lL")
DEFAULT_PROMPTS = ("The", "Once upon a time", "Q: What is the capital of France?\nA:")


# ----------------------------------------------------------------------------------------------- checks

def check_supported(config, tokenizer) -> tuple[str, bool, str]:
    """(llama.cpp architecture, permute Q/K, pre-tokenizer name), or one paragraph on why the run cannot go to GGUF."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise HftlError(f"hftl writes GGUF for the architectures {', '.join(sorted(ARCHS))} (model_type in "
                        f"config.json), not '{model_type}' ({(getattr(config, 'architectures', None) or ['?'])[0]}). "
                        "For other architectures use llama.cpp's convert_hf_to_gguf.py on the merged model "
                        "(hftl export RUN --merge).")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise HftlError(f"This {model_type} model scales its rotary embeddings with rope_type "
                        f"'{rope['rope_type']}' (config.json): hftl writes GGUF only for unscaled or linearly "
                        "scaled RoPE. Use llama.cpp's convert_hf_to_gguf.py on the merged model (hftl export RUN "
                        "--merge).")
    return *ARCHS[model_type], pre_tokenizer(tokenizer)


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: by the hash of its ids on llama.cpp's test text, as the
    converter finds it, or by its structure (GPT-2's byte-level regex, alone or after splitting every digit)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise HftlError(f"hftl writes GGUF for byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen); this one is "
                        f"a {spec.get('model', {}).get('type', type(tokenizer).__name__)} tokenizer. Use llama.cpp's "
                        "convert_hf_to_gguf.py on the merged model (hftl export RUN --merge).")
    name = PRE_TOKENIZERS.get(sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest())
    if name:
        return name
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise HftlError(f"llama.cpp would not split text as this tokenizer does: its pre-tokenizer ({' + '.join(kinds)}) "
                    "is none of those hftl can name for llama.cpp (gpt-2, smollm, llama-bpe, qwen2). Use llama.cpp's "
                    "convert_hf_to_gguf.py on the merged model (hftl export RUN --merge), which knows more.")


# ----------------------------------------------------------------------------------------------- writing

def write_gguf(model, tokenizer, path: Path, quant: str, name: str) -> dict:
    """Write `model` (a plain causal LM, float) and `tokenizer` to `path`; returns what was written."""
    import gguf
    import torch

    config = model.config
    arch, permute, pre = check_supported(config, tokenizer)  # before anything is written
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _hyper_parameters(writer, config, quant)
    _vocabulary(writer, tokenizer, config.vocab_size, pre)

    n_head = config.num_attention_heads
    n_kv = _kv_heads(config)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    counts: dict[str, int] = {}
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise HftlError(f"The weight '{key}' ({tuple(tensor.shape)}) has no GGUF name for llama.cpp's '{arch}' "
                            "architecture, so the file would not load: use llama.cpp's convert_hf_to_gguf.py on the "
                            "merged model (hftl export RUN --merge).")
        data = tensor.detach().to(torch.float32).cpu()
        if permute and key.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            data = _permute(data, n_head if "q_proj" in key else n_kv)
        data = data.numpy()
        qtype = _tensor_type(gguf, new, data, quant)
        try:
            stored = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # rows not a multiple of the block size
            qtype = gguf.GGMLQuantizationType.F16
            stored = gguf.quants.quantize(data, qtype)
        writer.add_tensor(new, stored, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        del data, stored
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "pre_tokenizer": pre, "tensor_types": counts}


def _kv_heads(config) -> int:
    """Key/value heads: fewer than the query heads under grouped-query attention."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _hyper_parameters(writer, config, quant: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(_kv_heads(config))
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if getattr(config, "head_dim", None) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocabulary(writer, tokenizer, vocab_size: int, pre: str) -> None:
    """llama.cpp's `gpt2` vocabulary: every id's token and type, the merges, the special ids, whether bos / eos are
    added (as the tokenizer does it, measured), the chat template."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=vocab_size)
    plain, full = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    special.add_special_token = {"bos": len(full) > len(plain) and full[0] == tokenizer.bos_token_id,
                                 "eos": len(full) > len(plain) and full[-1] == tokenizer.eos_token_id}
    if tokenizer.chat_template and not special.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def _permute(w, n_head: int):
    """HF's rotate-half Q/K rows back to llama.cpp's interleaved pairs (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(gguf, name: str, data, quant: str):
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0


# ----------------------------------------------------------------------------------------------- the check

def export_gguf_folder(run, model, tokenizer, stage: Path, quant: str) -> dict:
    """`model-<quant>.gguf` in `stage`, checked against `model` (the run's, merged, float32) on greedy tokens.
    `quant`: one of QUANTS (hftl.runs.export checks it)."""
    path = stage / f"model-{quant}.gguf"
    written = write_gguf(model, tokenizer, path, quant, name=run.path.resolve().name)
    generation = getattr(run.recipe, "generation", None)
    prompts = list(getattr(generation, "prompts", None) or DEFAULT_PROMPTS)
    n = min(getattr(generation, "max_new_tokens", 0) or 24, 32)
    return {"file": path.name, "quant": quant, "size_bytes": path.stat().st_size, "max_new_tokens": n, **written,
            **greedy_check(model, tokenizer, path, prompts, n)}


def greedy_check(model, tokenizer, path: Path, prompts: list[str], n: int) -> dict:
    """Greedy completions (token ids, up to `n` or an eos) of each prompt by `model` and by the GGUF file, both fed
    the same prompt ids; and whether the file's own tokenizer splits each prompt as `tokenizer` does."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    eos = _eos_ids(model, tokenizer)
    reference = [_greedy_hf(model, x, n, tokenizer, eos) for x in ids]
    try:
        import llama_cpp
    except ImportError:
        reader = "transformers' GGUF loader (llama-cpp-python is not installed)"
        theirs, split = _transformers_side(path, ids, prompts, n, tokenizer)
    else:
        reader = f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"
        theirs, split = _llama_cpp_side(path, ids, prompts, n, eos)
    rows = [{"prompt": p, "tokens": r, "gguf_tokens": t, "same": r == t, "same_split": s == x,
             "agree_prefix": next((k for k, (a, b) in enumerate(zip(r, t)) if a != b), min(len(r), len(t)))}
            for p, x, r, t, s in zip(prompts, ids, reference, theirs, split)]
    return {"reader": reader, "rows": rows, "same_tokens": sum(r["same"] for r in rows),
            "same_split": sum(r["same_split"] for r in rows), "prompts": len(rows)}


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return eos | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def _greedy_hf(model, ids: list[int], n: int, tokenizer, eos: set[int]) -> list[int]:
    import torch

    x = torch.tensor([ids])
    eos = sorted(eos)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             temperature=None, top_p=None, top_k=None, eos_token_id=eos or None,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0])
    return out[0, len(ids):].tolist()


def _llama_cpp_side(path: Path, ids, prompts, n: int, eos: set[int]):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=max(map(len, ids)) + n + 8, n_threads=os.cpu_count() or 1, seed=0,
                verbose=False)
    out = []
    for x in ids:
        got = []
        for t in llm.generate(x, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            got.append(int(t))
            if t in eos or len(got) == n:
                break
        out.append(got)
    split = [llm.tokenize(p.encode(), add_bos=True, special=True) for p in prompts]
    llm.close()
    return out, split


def _transformers_side(path: Path, ids, prompts, n: int, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with transformers_errors_only():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        theirs_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    eos = _eos_ids(model, theirs_tok) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
    out = [_greedy_hf(model, x, n, tokenizer, eos) for x in ids]
    return out, [theirs_tok(p)["input_ids"] for p in prompts]


def markdown(numbers: dict) -> str:
    rows = numbers["rows"]
    lines = [f"# Export: GGUF ({numbers['quant']})", "",
             f"`{numbers['file']}` ({numbers['size_bytes'] / 2**20:.1f} MB): llama.cpp architecture "
             f"`{numbers['architecture']}`, pre-tokenizer `{numbers['pre_tokenizer']}`, tensors "
             + ", ".join(f"{v} {k}" for k, v in sorted(numbers["tensor_types"].items())) + f", from `{numbers['run']}`"
             f" (`{numbers['model']}`).", "",
             f"Checked with {numbers['reader']}: greedy completions (up to {numbers['max_new_tokens']} tokens) of "
             f"each prompt, fed the same prompt ids, against the run's model in transformers (float32): "
             f"**{numbers['same_tokens']} of {numbers['prompts']} identical**; the file's tokenizer splits "
             f"{numbers['same_split']} of {numbers['prompts']} prompts as the run's does.", "",
             "| prompt | tokens | identical | first difference at | same split |", "|---|---:|---|---:|---|"]
    for r in rows:
        first = "-" if r["same"] else str(r["agree_prefix"])
        lines.append(f"| {json.dumps(r['prompt'])[1:-1].replace('|', '/')} | {len(r['tokens'])} | "
                     f"{'yes' if r['same'] else 'no'} | {first} | {'yes' if r['same_split'] else 'no'} |")
    lines += ["", "Run it: `llama-cli -m " + numbers["file"] + "` (llama.cpp), or in Ollama with a Modelfile "
              f"`FROM ./{numbers['file']}`."]
    return "\n".join(lines) + "\n"
