"""Tiny generative checkpoints saved like Hub ones (fast tokenizers trained here, random weights) and toy corpora."""

from __future__ import annotations

import json
import random
from pathlib import Path

# ChatML, as SmolLM2 / Qwen render conversations.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WORDS = "the cat sat on a mat dog ran to park red blue green one two three what is colour sky grass".split()
STORY = "the cat sat on the mat . the dog ran to the park ."


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(n)] + [STORY]


def byte_bpe(chat: bool):
    """A byte-level BPE tokenizer (GPT-2 style: no pad token, eos '<|endoftext|>'), ChatML tokens in its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHATML
    return fast


def save_gpt2(d: Path, chat: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_bpe(chat)
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(d)
    return d


def save_llama(d: Path, seed: int = 0) -> Path:
    """A Llama (SmolLM2's architecture: tied embeddings, grouped-query attention) with the ChatML tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_bpe(chat=True)
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(d)
    return d


DIGITS = "zero one two three four five six seven eight nine".split()


def save_t5(d: Path, seed: int = 0) -> Path:
    """A 2+2-layer T5 with a word-level tokenizer that appends </s> (T5's own convention)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *DIGITS, "copy", "reverse", ":", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(d)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(d)
    return d


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def copy_rows(n: int, seed: int) -> list[dict]:
    """text -> summary: copy three digits (a task a tiny T5 learns in a few epochs)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        seq = " ".join(rng.choice(DIGITS) for _ in range(3))
        rows.append({"text": f"copy : {seq}", "summary": seq})
    return rows


def qa_rows(n: int) -> list[dict]:
    """prompt -> completion pairs with a fixed answer per question."""
    qa = [("what colour is the sky ?", " blue"), ("what colour is grass ?", " green"), ("one two", " three")]
    return [{"prompt": qa[i % 3][0], "completion": qa[i % 3][1]} for i in range(n)]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "be short"},
                          {"role": "user", "content": q}, {"role": "assistant", "content": a.strip()},
                          {"role": "user", "content": "and the cat ?"}, {"role": "assistant", "content": "red"}]}
            for q, a in ((r["prompt"], r["completion"]) for r in qa_rows(n))]
