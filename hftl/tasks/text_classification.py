"""Text classification (sentiment and any labels): AutoModelForSequenceClassification + the checkpoint's tokenizer.

The template for a new task: a `Task` subclass (here via `ClassificationTask`, which brings the labels
and metrics) with the processor, preprocessing for training and for unlabelled inputs, and the card text.
"""

from __future__ import annotations

import hashlib
import json

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftl.errors import HftlError, did_you_mean
from hftl.tasks.base import register_task
from hftl.tasks.labels import ClassificationTask

_DEFAULT_COLUMNS = ("sentence", "text")


def max_length(tokenizer, data) -> int:
    limit = getattr(tokenizer, "model_max_length", None) or data.max_seq_length
    return min(data.max_seq_length, limit)


def _text_columns(ds, data) -> list[str]:
    if data.text_column_names:
        if len(data.text_column_names) > 2:
            raise HftlError("Recipe key 'data.text_column_names': give one column, or two for sentence pairs.")
        for c in data.text_column_names:
            if c not in ds.column_names:
                raise HftlError(
                    f"Recipe key 'data.text_column_names': column '{c}' not in the data; columns are: "
                    f"{', '.join(ds.column_names)}.{did_you_mean(c, ds.column_names)}")
        return list(data.text_column_names)
    for c in _DEFAULT_COLUMNS:
        if c in ds.column_names:
            return [c]
    raise HftlError(
        f"Recipe key 'data.text_column_names' is needed: no 'sentence' or 'text' column; columns are: {', '.join(ds.column_names)}.")


def _check_texts(ds, columns, split):
    for c in columns:
        values = ds[c]
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise HftlError(
                f"Column '{c}' (data.text_column_names) has a missing or non-text value at {split} row {bad} "
                f"({values[bad]!r}); drop or fill such rows.")


@register_task
class TextClassification(ClassificationTask):
    name = "text-classification"
    auto_model = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    prompt_learning = True
    example_input = '"I love this!"'
    pipeline_options = ", truncation=True"
    processor_arg = ("tokenizer", "AutoTokenizer")

    def load_processor(self, model_section, path: str, data):
        tokenizer = AutoTokenizer.from_pretrained(
            model_section.tokenizer_name or path, revision=model_section.model_revision,
            trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-style tokenizers have no pad token
        return tokenizer

    def portable_processor(self, tokenizer, data, model):
        """The tokenizer the run saves: model_max_length is the run's max_seq_length, so `pipeline(...,
        truncation=True)` cuts texts where the run did."""
        tokenizer.model_max_length = max_length(tokenizer, data)
        return tokenizer

    def _tokenize(self, ds, tokenizer, data, columns, split: str, keep=("labels",)):
        _check_texts(ds, columns, split)
        max_len = max_length(tokenizer, data)

        def tokenize(batch):
            return tokenizer(*[batch[c] for c in columns], truncation=True, max_length=max_len)

        removed = [c for c in ds.column_names if c not in keep]
        return ds.map(tokenize, batched=True, remove_columns=removed, desc=f"tokenize {split}",
                      new_fingerprint=map_fingerprint(ds, tokenizer, columns, max_len, removed))

    def prepare(self, splits, tokenizer, data, model=None):
        """Tokenize both splits (truncation to max_seq_length; padding per batch by the collator)."""
        columns = _text_columns(splits.train, data)
        train = self._tokenize(splits.train, tokenizer, data, columns, "train")
        validation = self._tokenize(splits.validation, tokenizer, data, columns, "validation")
        return train, validation, self.collator(tokenizer, data)

    def collator(self, tokenizer, data):
        return DataCollatorWithPadding(tokenizer)

    def input_column(self, data) -> str:
        return data.text_column_names[0] if data.text_column_names else "text"

    def literal(self, text: str):
        return text

    def prepare_inputs(self, dataset, tokenizer, data):
        return self._tokenize(dataset, tokenizer, data, _text_columns(dataset, data), "input", keep=())

    def describe_preprocessing(self, tokenizer, data) -> str:
        return f"{type(tokenizer).__name__}, max_seq_length={data.max_seq_length}, dynamic padding"


def map_fingerprint(ds, tokenizer, *settings) -> str | None:
    """The fingerprint of `ds.map(<tokenize with these settings>)`, from the fast tokenizer's serialized state.

    Without it `datasets` fingerprints the map function by pickling its closure, tokenizer included: ~0.5 s
    a split, most of a cached feature-extraction run's setup. None (datasets' own way) for slow tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(ds, "_fingerprint", None) is None:
        return None
    described = json.dumps([type(tokenizer).__name__, tokenizer.init_kwargs, tokenizer.padding_side,
                            tokenizer.truncation_side, [str(t) for t in tokenizer.all_special_tokens], settings],
                           sort_keys=True, default=str)
    state = json.loads(backend.to_str())
    for k in ("truncation", "padding"):  # what the last call left; every call sets its own
        state.pop(k, None)
    h = hashlib.sha256(b"hftl-tokenize-1")
    for part in (ds._fingerprint, json.dumps(state), described):
        h.update(part.encode())
    return h.hexdigest()[:32]
