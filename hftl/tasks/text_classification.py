"""Text classification (sentiment and any labels): AutoModelForSequenceClassification + the checkpoint's tokenizer."""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftl.errors import HftlError

AUTO_MODEL = AutoModelForSequenceClassification
PEFT_TASK_TYPE = "SEQ_CLS"
_DEFAULT_COLUMNS = ("sentence", "text")


def load_processor(model_section, path: str):
    tokenizer = AutoTokenizer.from_pretrained(
        model_section.tokenizer_name or path, revision=model_section.model_revision,
        trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-style tokenizers have no pad token
    return tokenizer


def portable_processor(tokenizer, data, model):
    """The tokenizer the run saves: model_max_length is the run's max_seq_length, so `pipeline(...,
    truncation=True)` cuts texts where the run did."""
    tokenizer.model_max_length = _max_length(tokenizer, data)
    return tokenizer


def _max_length(tokenizer, data) -> int:
    limit = getattr(tokenizer, "model_max_length", None) or data.max_seq_length
    return min(data.max_seq_length, limit)


def _text_columns(ds, data) -> list[str]:
    if data.text_column_names:
        if len(data.text_column_names) > 2:
            raise HftlError("Recipe key 'data.text_column_names': give one column, or two for sentence pairs.")
        for c in data.text_column_names:
            if c not in ds.column_names:
                from hftl.errors import did_you_mean

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


def prepare(splits, tokenizer, data, model=None):
    """Tokenize both splits (truncation to max_seq_length; padding per batch by the collator)."""
    columns = _text_columns(splits.train, data)
    max_len = _max_length(tokenizer, data)

    def tokenize(batch):
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=max_len)

    out = []
    for name, ds in (("train", splits.train), ("validation", splits.validation)):
        _check_texts(ds, columns, name)
        keep = {"labels"}
        ds = ds.map(tokenize, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                    desc=f"tokenize {name}")
        out.append(ds)
    return out[0], out[1], DataCollatorWithPadding(tokenizer)


def describe_preprocessing(tokenizer, data) -> str:
    return f"{type(tokenizer).__name__}, max_seq_length={data.max_seq_length}, dynamic padding"
