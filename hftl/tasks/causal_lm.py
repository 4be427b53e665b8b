"""Causal language modelling: any AutoModelForCausalLM (GPT-2, Llama, SmolLM, Qwen) on text, prompt/completion
pairs or conversations, as TRL's SFT datasets hold them.

The data's columns say which (TRL's conventions):
- `messages` (a list of {role, content}): rendered with the tokenizer's chat template; the loss covers the
  assistant turns only (their text and the template's end-of-turn tokens).
- `prompt` + `completion`: the loss covers the completion only; prompt tokens are labelled -100.
- otherwise a text column (`data.text_column_name`, default `text`; `.txt` files: one document per line,
  paragraph or file, `data.sample_by`): the loss covers every token.
Each example ends with the eos token (so the model learns to stop), is cut at `data.max_seq_length`, and, with
`data.packing`, concatenated with the others and cut into full blocks. Labels are the input ids themselves:
the model shifts them (once) inside its loss.
"""

from __future__ import annotations

import logging

from transformers import AutoModelForCausalLM

from hftl.errors import HftlError, did_you_mean
from hftl.tasks.base import Task, register_task
from hftl.tasks.generative import IGNORE, GenerativeTask, PadCollator, add_perplexity, grow_vocabulary

logger = logging.getLogger("hftl")

ROLES = ("system", "user", "assistant", "tool")


def _format(ds, data) -> str:
    columns = ds.column_names
    if "messages" in columns:
        return "messages"
    if "prompt" in columns or "completion" in columns:
        if not {"prompt", "completion"} <= set(columns):
            missing = "completion" if "prompt" in columns else "prompt"
            raise HftlError(f"The data has a '{'prompt' if missing == 'completion' else 'completion'}' column but no "
                            f"'{missing}' column: prompt/completion data needs both (columns: {', '.join(columns)}).")
        return "prompt_completion"
    column = data.text_column_name or "text"
    if column not in columns:
        raise HftlError(
            f"Recipe key 'data.text_column_name' (default text): no column '{column}' in the data; causal-lm data "
            f"needs a text column, 'prompt' + 'completion' columns, or a 'messages' column; columns are: "
            f"{', '.join(columns)}.{did_you_mean(column, columns)}")
    return "text"


def _strings(ds, column: str, split: str, allow_empty: bool = True):
    values = ds[column]
    for i, v in enumerate(values):
        if not isinstance(v, str) or (not allow_empty and not v.strip()):
            what = "an empty" if isinstance(v, str) else f"a non-text ({v!r})"
            raise HftlError(f"Column '{column}' has {what} value at {split} row {i}; drop or fill such rows.")
    return values


def _check_messages(conversations, split: str) -> None:
    for i, messages in enumerate(conversations):
        if isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                              and any(isinstance(p, dict) and p.get("type") == "image"
                                                      for p in m["content"]) for m in messages):
            raise HftlError(f"Column 'messages' at {split} row {i} holds an image part, and task causal-lm reads text "
                            "only; use task image-text-to-text with a vision-language model for images.")
        if not isinstance(messages, list) or not messages:
            raise HftlError(f"Column 'messages' at {split} row {i} is not a list of {{role, content}} messages.")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise HftlError(f"Column 'messages' at {split} row {i}: every message needs a 'role' and a text "
                                f"'content' (got {m!r}).")
            if m["role"] not in ROLES:
                raise HftlError(f"Column 'messages' at {split} row {i}: unknown role {m['role']!r}; allowed: "
                                f"{', '.join(ROLES)}.{did_you_mean(str(m['role']), ROLES)}")
        if not any(m["role"] == "assistant" for m in messages):
            raise HftlError(f"Column 'messages' at {split} row {i} has no assistant turn: nothing to learn from.")


@register_task
class CausalLM(GenerativeTask, Task):
    name = "causal-lm"
    pipeline_tag = "text-generation"
    auto_model = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    prompt_learning = True
    reads_plain_text = True
    metric_names = {"perplexity": "perplexity"}
    example_input = '"Once upon a time"'
    exports = ("merge", "gguf")

    def configure_model(self, model, model_section) -> None:
        # transformers finds a model's loss by its class name, and GPT-2's (GPT2LMHeadModel) names none: the
        # Trainer then counts the tokens of num_items_in_batch as if the labels were not shifted (one more per row)
        # and every loss comes out n / (n + rows) too small. The loss itself is ForCausalLM's either way.
        if getattr(model, "loss_type", "") is None:
            model.loss_type = "ForCausalLM"

    def portable_processor(self, tokenizer, data, model):
        """The saved tokenizer pads on the left (batched generation continues every prompt from its last token);
        training pads on the right in the collator. New special tokens grow the embeddings here."""
        grow_vocabulary(model, tokenizer)
        tokenizer.padding_side = "left"
        tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes
        return tokenizer

    # ------------------------------------------------------------------------------------------ preprocessing

    def _encode(self, ds, tokenizer, data, split: str):
        if "images" in ds.column_names:
            raise HftlError(f"The {split} data has an 'images' column, and task causal-lm reads text only; use task "
                            "image-text-to-text with a vision-language model for images (TRL's messages + images).")
        kind = _format(ds, data)
        if kind == "messages" and not tokenizer.chat_template:
            raise HftlError("The data has a 'messages' column but the tokenizer of this model has no chat template; "
                            "use a chat model (an -Instruct checkpoint), a tokenizer that has one (model.tokenizer_name), "
                            "or prompt/completion columns.")
        eos = tokenizer.eos_token_id
        max_len = data.max_seq_length if data.packing else min(data.max_seq_length, tokenizer.model_max_length)

        def finish(ids, labels):
            if eos is not None and (not ids or ids[-1] != eos):
                ids, labels = ids + [eos], labels + [eos]
            if not data.packing:
                ids, labels = ids[:max_len], labels[:max_len]
            return ids, labels

        if kind == "text":
            column = data.text_column_name or "text"
            texts = _strings(ds, column, split)

            def rows():
                for t in texts:
                    ids = tokenizer(t)["input_ids"]
                    yield finish(ids, list(ids))
        elif kind == "prompt_completion":
            prompts = _strings(ds, "prompt", split)
            completions = _strings(ds, "completion", split, allow_empty=False)

            def rows():
                for p, c in zip(prompts, completions):
                    p_ids = tokenizer(p)["input_ids"]
                    c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
                    yield finish(p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids)
        else:
            conversations = ds["messages"]
            _check_messages(conversations, split)

            def rows():
                for messages in conversations:
                    yield finish(*_chat_labels(tokenizer, list(messages)))

        ids, labels = zip(*rows()) if len(ds) else ((), ())
        return list(ids), list(labels), kind

    def _dataset(self, ids, labels, data, split: str, kind: str):
        from datasets import Dataset

        if data.packing:
            ids, labels = _pack(ids, labels, data.max_seq_length)
        keep = [i for i, lab in enumerate(labels) if any(t != IGNORE for t in lab[1:])]
        dropped = len(labels) - len(keep)
        if not keep:
            raise HftlError(f"No {split} example has a token to learn from within data.max_seq_length="
                            f"{data.max_seq_length} (every {'completion' if kind != 'text' else 'text'} is cut off or "
                            "empty); raise max_seq_length.")
        if dropped:
            logger.warning("%d %s examples dropped: their prompt fills data.max_seq_length=%d, so "
                                              "no completion token is left to learn from.", dropped, split, data.max_seq_length)
        return Dataset.from_dict({"input_ids": [ids[i] for i in keep], "labels": [labels[i] for i in keep]})

    def prepare(self, splits, tokenizer, data, model=None):
        out = []
        for split, ds in (("train", splits.train), ("validation", splits.validation)):
            ids, labels, kind = self._encode(ds, tokenizer, data, split)
            out.append(self._dataset(ids, labels, data, split, kind))
        return out[0], out[1], self.collator(tokenizer, data)

    def collator(self, tokenizer, data):
        return PadCollator(tokenizer.pad_token_id)

    def prepare_inputs(self, dataset, tokenizer, data):
        from datasets import Dataset

        column = self.input_column(data)
        texts = _strings(dataset, column, "input")
        return Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in texts]})

    def input_column(self, data) -> str:
        return data.text_column_name or "text"

    def literal(self, text: str):
        return text

    # ------------------------------------------------------------------------------------------ metrics / card

    def finish_metrics(self, metrics: dict) -> None:
        add_perplexity(metrics)

    def loss_tokens(self, labels) -> int:
        return int((labels[..., 1:] != IGNORE).sum())  # the model shifts: the first position predicts nothing

    def describe_preprocessing(self, tokenizer, data) -> str:
        how = f"packed into blocks of {data.max_seq_length} tokens" if data.packing else \
            f"max_seq_length={data.max_seq_length}, dynamic padding (right; labels -100)"
        return f"{type(tokenizer).__name__}, eos appended, {how}; loss on completions / assistant turns where given"

    def adapter_usage(self, labels_kwargs: str) -> list[str]:
        return ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer, pipeline", "",
                "model = AutoPeftModelForCausalLM.from_pretrained(model_id)",
                'classifier = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(model_id))']


def _chat_labels(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: the template's text, tokenized once, with labels on the
    characters of each assistant turn (from the end of the prompt the template builds for it to the end of the
    turn), found by offsets so a token that straddles a boundary is never split."""
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    text = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, end = len(render(messages[:i], True)), len(render(messages[: i + 1]))
        if not (text.startswith(render(messages[:i], True)) and text.startswith(render(messages[: i + 1]))):
            raise HftlError("The tokenizer's chat template renders a conversation differently from its turns one by "
                            "one, so the assistant turns cannot be located; give prompt/completion columns instead.")
        spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [t if any(s <= a and b <= e and b > a for s, e in spans) else IGNORE
              for t, (a, b) in zip(ids, enc["offset_mapping"])]
    return ids, labels


def _pack(ids: list[list[int]], labels: list[list[int]], block: int):
    """Concatenate and cut into full blocks of `block` tokens (the remainder is dropped, as run_clm does, unless
    it is all there is). Labels move with their tokens: a prompt's -100 stays on the prompt."""
    flat_ids = [t for seq in ids for t in seq]
    flat_labels = [t for seq in labels for t in seq]
    n = max(len(flat_ids) // block, 1)
    return ([flat_ids[i * block:(i + 1) * block] for i in range(n)],
            [flat_labels[i * block:(i + 1) * block] for i in range(n)])
