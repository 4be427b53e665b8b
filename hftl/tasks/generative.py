"""What the generative tasks (causal-lm, seq2seq) share: the tokenizer's pad token, new special tokens, the
collator that pads labels with -100, perplexity, and the completions sampled for the card."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping

from hftl.errors import HftlError

logger = logging.getLogger("hftl")
IGNORE = -100  # label ids the loss skips (transformers' CrossEntropy ignore_index)


def load_tokenizer(model_section, path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_section.tokenizer_name or path, revision=model_section.model_revision,
        trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise HftlError(f"The tokenizer of '{model_section.source}' has neither a pad nor an eos token; "
                            "add one with model.extra_special_tokens and set it as pad in a tokenizer of your own "
                            "(model.tokenizer_name).")
        # GPT-style tokenizers have no pad token. Padding never reaches the loss: the collator masks labels by
        # length, not by id, so the eos that ends each document still trains.
        tokenizer.pad_token = tokenizer.eos_token
    new = [t for t in model_section.extra_special_tokens or [] if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    return tokenizer


def grow_vocabulary(model, tokenizer) -> None:
    """Resize the embeddings to the tokenizer when it holds new special tokens (their rows start at the mean
    of the old ones, transformers' default)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    model.resize_token_embeddings(len(tokenizer))
    model.hftl_new_tokens = len(tokenizer) - rows  # read by new_embeddings (PEFT's modules_to_save)
    logger.info("vocabulary grew from %d to %d tokens: embeddings resized", rows, len(tokenizer))


class GenerativeTask:
    """Mixin of causal-lm and seq2seq: no labels, the checkpoint's own LM head, a tokenizer, token-level losses,
    and what predicting and reloading a text-writing run means."""

    generates = True
    token_loss = True
    exports = ("merge",)
    processor_arg = ("tokenizer", "AutoTokenizer")

    def load_processor(self, model_section, path, data):
        return load_tokenizer(model_section, path)

    def adapter_modules(self, model) -> list[str]:
        return new_embeddings(model)

    def encode_prompt(self, tokenizer, data, prompt: str) -> list[int]:
        return tokenizer(prompt)["input_ids"]

    def reload_base(self, model, output_dir) -> None:
        from transformers import AutoTokenizer

        grow_vocabulary(model, AutoTokenizer.from_pretrained(output_dir))

    def generate(self, model, tokenizer, data, generation, prompts: list[str]) -> list[str]:
        """`hftl predict`: the completion of each prompt, decoded as `generation` (the recipe's section, its
        defaults filled in) says."""
        return sample(model, tokenizer, prompts, generation, lambda p: self.encode_prompt(tokenizer, data, p))

    def report(self, model, tokenizer, data, generation):
        return samples_report(model, tokenizer, generation, lambda p: self.encode_prompt(tokenizer, data, p))


def new_embeddings(model) -> list[str]:
    """Module paths PEFT must train and save because the vocabulary grew: the input embeddings, and the output
    embeddings where they are not tied to them; [] when it did not grow."""
    if not getattr(model, "hftl_new_tokens", 0):
        return []
    modules = {id(m): n for n, m in model.named_modules()}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = [modules[id(inp)]]
    if out is not None and out.weight is not inp.weight:
        names.append(modules[id(out)])
    return names


class PadCollator:
    """Pads input_ids (pad id), attention_mask (0) and labels (-100) on the right, by each example's length:
    the labels of real tokens are kept even when the pad token is the eos token. Seq2seq examples pad their
    labels to their own length."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else -(-n // m) * m

    def __call__(self, features: list[dict]):
        import torch

        batch = {}
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE}
        for key in features[0]:
            if key not in pads:
                continue
            width = self._width(max(len(f[key]) for f in features))
            batch[key] = torch.tensor([list(f[key]) + [pads[key]] * (width - len(f[key])) for f in features])
        if "attention_mask" not in batch:
            width = batch["input_ids"].shape[1]
            batch["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                    for f in features])
        return batch


def add_perplexity(metrics: dict) -> None:
    for key in [k for k in metrics if k.endswith("_loss") and k.startswith("eval")]:
        prefix = key[: -len("loss")]
        loss = metrics[key]
        metrics[prefix + "perplexity"] = math.exp(loss) if loss < 700 else float("inf")


def sample(model, tokenizer, prompts: list, generation, encode) -> list[str]:
    """Completions of `prompts` (`encode(prompt)` -> input ids, or the dict of tensors a processor returns):
    seeded sampling, or greedy at temperature 0; the model's mode and the global random state are left as they were."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    options = dict(max_new_tokens=generation.max_new_tokens, num_beams=generation.num_beams,
                   pad_token_id=tokenizer.pad_token_id)
    if generation.temperature > 0:
        options.update(do_sample=True, temperature=generation.temperature, top_p=generation.top_p)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(generation.seed)
        for prompt in prompts:
            inputs = encode(prompt)
            if not isinstance(inputs, Mapping):
                ids = torch.tensor([inputs])
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            inputs = {k: v.to(device) for k, v in inputs.items()}
            generated = model.generate(**inputs, **options)[0]
            if not getattr(model.config, "is_encoder_decoder", False):
                generated = generated[inputs["input_ids"].shape[1]:]
            out.append(tokenizer.decode(generated, skip_special_tokens=True))
    model.train(was_training)
    return out


def samples_report(model, tokenizer, generation, encode, prompts: list | None = None,
                   shown: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The card's table and samples.jsonl: each prompt's completion by the trained model and, for an adapter run,
    by the base model (the adapter switched off). `prompts`: what `encode` takes, when not the recipe's prompts
    themselves; `shown`: how the table names them (default: the recipe's prompts)."""
    if generation is None or not generation.prompts:
        return [], {}
    prompts = generation.prompts if prompts is None else prompts
    trained = sample(model, tokenizer, prompts, generation, encode)
    base = None
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            base = sample(model, tokenizer, prompts, generation, encode)
    return samples_table(shown or generation.prompts, trained, base, generation)


def samples_table(prompts: list[str], trained: list[str], base: list[str] | None, generation):
    """(card lines, {"samples.jsonl": ...}) of each prompt's completion, beside the base model's when given."""
    rows = [{"prompt": p, "completion": c, **({"base_completion": b} if base else {})}
            for p, c, b in zip(prompts, trained, base or trained)]
    decoding = (f"temperature {generation.temperature}, top_p {generation.top_p}, seed {generation.seed}"
                if generation.temperature > 0 else "greedy")
    lines = ["", "## Samples", "", f"Completions of fixed prompts ({generation.max_new_tokens} new tokens, {decoding}; "
             "samples.jsonl has them all).", ""]
    cell = lambda t: t.replace("|", "\\|").replace("\n", "<br>").strip() or "(empty)"  # noqa: E731
    if base:
        lines += ["| prompt | base model | this model |", "|---|---|---|"]
        lines += [f"| {cell(r['prompt'])} | {cell(r['base_completion'])} | {cell(r['completion'])} |" for r in rows]
    else:
        lines += ["| prompt | completion |", "|---|---|"]
        lines += [f"| {cell(r['prompt'])} | {cell(r['completion'])} |" for r in rows]
    return lines, {"samples.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)}
