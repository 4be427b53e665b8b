"""Token classification (NER, POS): AutoModelForTokenClassification on word lists, as in transformers' run_ner.

Data: a column of word lists (data.text_column_name, default `tokens`) and a column of tag lists, one tag per
word (data.label_column_name, default `ner_tags`): strings, or ints with a `Sequence(ClassLabel)` feature (its
names are the tags). The training split fixes the tag set (a ClassLabel's names in its order, else the tags
sorted); the validation split may only use those.

Words are tokenized with `is_split_into_words=True` (a fast tokenizer: the labels follow `word_ids()`): the
first sub-token of each word carries the word's tag, the other sub-tokens and the special tokens get -100
(ignored by the loss). With data.label_all_tokens every sub-token of a training word carries the tag, a B-
tag continuing as its I- tag (when the tag set has one), as run_ner does; the evaluation split always labels
first sub-tokens only, so the metrics are per word whatever the training labels are.

Metrics: seqeval on the words' tags (the first sub-token's prediction stands for the word), default
(conlleval) mode as evaluate's `seqeval`: entity-level micro precision / recall / F1 and word accuracy.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from hftl.errors import HftlError, did_you_mean
from hftl.tasks.base import register_task
from hftl.tasks.labels import ClassificationTask, label_config
from hftl.tasks.text_classification import max_length

IGNORE = -100  # the label of positions the loss and the metrics skip
WORD_IDS = "word_ids"  # prepare_inputs' column: each token's word (-1 for special tokens)
_PREFIX_SPACE_TYPES = ("gpt2", "roberta", "deberta", "bloom", "longformer", "bart", "mvp", "led")


# ----------------------------------------------------------------------------------------------- labels


def _tag_rows(ds, column: str, split: str) -> list[list[str]]:
    """Each row's tags as strings (ClassLabel ids by their names); anything but a list of tags is refused."""
    from datasets import ClassLabel

    feature = ds.features[column]
    inner = getattr(feature, "feature", None)
    names = inner.names if isinstance(inner, ClassLabel) else None
    rows = []
    for i, row in enumerate(ds[column]):
        if not isinstance(row, list):
            raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' must hold a list of tags per row "
                            f"(one per word), but {split} row {i} is {row!r}.")
        bad = next((t for t in row if isinstance(t, bool) or not isinstance(t, (str, int))), "ok")
        if bad != "ok":
            raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' must hold lists of tags (strings, "
                            f"or integers with a ClassLabel feature), but {split} row {i} has {bad!r}.")
        if names is not None and any(not 0 <= t < len(names) for t in row):
            raise HftlError(f"Recipe key 'data.label_column_name': {split} row {i} of column '{column}' has a tag id "
                            f"outside its ClassLabel's {len(names)} names: {row!r}.")
        rows.append([names[t] if names is not None else str(t) for t in row])
    return rows


def _tag_names(ds, column: str, rows: list[list[str]]) -> list[str]:
    from datasets import ClassLabel

    inner = getattr(ds.features[column], "feature", None)
    if isinstance(inner, ClassLabel):
        names = list(inner.names)
    else:
        values = {t for row in ds[column] for t in row}
        names = [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]
    if len(names) < 2:
        raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' has a single tag {names}; token "
                        "classification needs at least 2 (e.g. O and B-PER).")
    return names


def _encode(ds, column: str, rows: list[list[str]], names: list[str], split: str):
    from datasets import ClassLabel, List

    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({t for row in rows for t in row} - set(index))
    if unknown:
        row = next(i for i, r in enumerate(rows) if any(t not in index for t in r))
        raise HftlError(f"Recipe key 'data.label_column_name': the {split} tags {unknown} (first at row {row}) do not "
                        f"occur in the training data's column '{column}' (tags: {', '.join(names)}).")
    features = ds.features.copy()
    features[column] = List(ClassLabel(names=names))
    ids = [[index[t] for t in row] for row in rows]
    return ds.map(lambda _, rows: {column: [ids[i] for i in rows]}, batched=True, with_indices=True, features=features,
                  desc=f"encode {split} tags")


def continuation_ids(names: list[str]) -> list[int]:
    """For each tag id, the id a word's later sub-tokens carry with label_all_tokens: B-X -> I-X where the tag
    set has I-X, any other tag itself."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def align_labels(word_ids: list[int | None], word_labels: list[int],
                 continuation: list[int] | None = None) -> list[int]:
    """Word tags -> one label per token. The first sub-token of a word carries its tag; later sub-tokens get -100,
    or with `continuation` (see continuation_ids: label_all_tokens) the continuation of the tag; special tokens
    (word id None) get -100."""
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(word_labels[w])
        else:
            out.append(IGNORE if continuation is None else continuation[word_labels[w]])
        previous = w
    return out


# ----------------------------------------------------------------------------------------------- metrics


def word_tags(predictions, label_ids, label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(true tags, predicted tags) per example at the labelled positions only (the first sub-token of each word):
    predictions are tag ids or logits, both padded like the labels (-100 where there is no token)."""
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    labels = np.asarray(label_ids)
    true, pred = [], []
    for p_row, l_row in zip(predictions, labels):
        keep = l_row != IGNORE
        true.append([label_names[int(i)] for i in l_row[keep]])
        pred.append([label_names[int(i)] for i in p_row[keep]])
    return true, pred


def seqeval_metrics(eval_pred, label_names: list[str]) -> dict[str, float]:
    """Entity-level (micro) precision / recall / F1 and word accuracy, by seqeval in its default (conlleval) mode."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred[0], eval_pred[1]
    true, pred = word_tags(predictions, labels, label_names)
    return {"f1": float(f1_score(true, pred, zero_division=0)),
            "precision": float(precision_score(true, pred, zero_division=0)),
            "recall": float(recall_score(true, pred, zero_division=0)),
            "accuracy": float(accuracy_score(true, pred))}


# ----------------------------------------------------------------------------------------------- the task


class _Collator(DataCollatorForTokenClassification):
    """DataCollatorForTokenClassification (labels padded with -100) that leaves prepare_inputs' word_ids out."""

    def __call__(self, features, return_tensors=None):
        features = [{k: v for k, v in f.items() if k != WORD_IDS} for f in features]
        return super().__call__(features, return_tensors)


def _text_column(ds, data, label: str | None = None) -> str:
    """The word-list column; `label`: the data's own name of the column load_splits renamed to `labels`."""
    column = data.text_column_name or "tokens"
    if column not in ds.column_names:
        hint = "" if data.text_column_name else " (the default)"
        names = [label if label and c == "labels" else c for c in ds.column_names]
        words = [c for c in ds.column_names if c != "labels" and getattr(getattr(ds.features[c], "feature", None),
                                                                         "dtype", None) == "string"]
        suggest = f" Columns of word lists: {', '.join(words)}." if words and not did_you_mean(column, names) else ""
        raise HftlError(f"Recipe key 'data.text_column_name': column '{column}'{hint} not in the data; columns are: "
                        f"{', '.join(names)}.{did_you_mean(column, names)}{suggest}")
    return column


def _check_words(ds, column: str, split: str) -> list[list[str]]:
    words = ds[column]
    for i, row in enumerate(words):
        if not isinstance(row, list) or not all(isinstance(w, str) for w in row):
            hint = "; split the text into words first." if isinstance(row, str) else "."
            raise HftlError(f"Column '{column}' (data.text_column_name) must hold a list of words per row, but {split} "
                            f"row {i} is {row!r}{hint}")
    return words


@register_task
class TokenClassification(ClassificationTask):
    name = "token-classification"
    auto_model = AutoModelForTokenClassification
    peft_task_type = "TOKEN_CLS"
    # PEFT's prompt tuning for TOKEN_CLS prepends virtual tokens to the logits but not to the labels (the loss
    # fails on the length mismatch), and BERT-style models take no key/value prefix: LoRA-style methods only.
    prompt_learning = False  # PEFT 0.21: prompt tuning breaks the per-token labels, prefix tuning needs a KV cache
    label_column = "ner_tags"
    metric_names = {"f1": "F1", "precision": "Precision", "recall": "Recall", "accuracy": "Accuracy"}
    example_input = '"Hugging Face is based in New York City"'
    pipeline_options = ', aggregation_strategy="first"'
    processor_arg = ("tokenizer", "AutoTokenizer")

    # ------------------------------------------------------------------------------------------ labels

    def encode_labels(self, train, validation, column: str):
        rows = _tag_rows(train, column, "train")
        names = _tag_names(train, column, rows)
        train = _encode(train, column, rows, names, "train")
        if validation is not None:
            validation = _encode(validation, column, _tag_rows(validation, column, "validation"), names, "validation")
        return train, validation, names

    def config_kwargs(self, label_names: list[str]) -> dict:
        return label_config(label_names)

    # ------------------------------------------------------------------------------------------ processor

    def load_processor(self, model_section, path: str, data):
        kwargs = dict(revision=model_section.model_revision, trust_remote_code=model_section.trust_remote_code,
                      cache_dir=model_section.cache_dir)
        name = model_section.tokenizer_name or path
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        byte_level = "ByteLevel(add_prefix_space=False" in repr(getattr(backend, "pre_tokenizer", None))
        if byte_level or _model_type(model_section, path, kwargs) in _PREFIX_SPACE_TYPES:
            # byte-level BPE (GPT-2, RoBERTa), as run_ner: each pre-split word needs its leading space
            tokenizer = AutoTokenizer.from_pretrained(name, add_prefix_space=True, **kwargs)
        if not tokenizer.is_fast:
            raise HftlError(
                f"Recipe key 'model.tokenizer_name': token classification needs a fast tokenizer (its word_ids() map "
                f"sub-tokens to words), but '{name}' loads {type(tokenizer).__name__}, a slow one. Give a checkpoint "
                "or model.tokenizer_name that ships a tokenizer.json.")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def portable_processor(self, tokenizer, data, model):
        """model_max_length = the run's max_seq_length: the token-classification pipeline truncates there too."""
        tokenizer.model_max_length = max_length(tokenizer, data)
        return tokenizer

    # ------------------------------------------------------------------------------------------ preprocessing

    def _label_name(self, data) -> str:
        return data.label_column_name or self.label_column

    def _tokenize(self, ds, tokenizer, data, column: str, split: str, continuation=None, labelled=True):
        words = _check_words(ds, column, split)
        if labelled:
            for i, (w, tags) in enumerate(zip(words, ds["labels"])):
                if len(w) != len(tags):
                    shown = " ".join(w[:8]) + (" ..." if len(w) > 8 else "")
                    raise HftlError(
                        f"Recipe keys 'data.text_column_name' and 'data.label_column_name': {split} row {i} has "
                        f"{len(w)} words in '{column}' but {len(tags)} tags in '{self._label_name(data)}' (words: "
                        f"{shown!r}); every word needs exactly one tag.")
        max_len = max_length(tokenizer, data)

        def tokenize(batch):
            enc = tokenizer(batch[column], is_split_into_words=True, truncation=True, max_length=max_len)
            ids = [enc.word_ids(i) for i in range(len(batch[column]))]
            if labelled:
                enc["labels"] = [align_labels(w, tags, continuation) for w, tags in zip(ids, batch["labels"])]
            else:
                enc[WORD_IDS] = [[-1 if w is None else w for w in row] for row in ids]
            return enc

        return ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc=f"tokenize {split}")

    def prepare(self, splits, tokenizer, data, model=None):
        """Tokenize the word lists, labels aligned to sub-tokens (label_all_tokens: training split only)."""
        column = _text_column(splits.train, data, self._label_name(data))
        _text_column(splits.validation, data, self._label_name(data))
        continuation = continuation_ids(splits.label_names) if data.label_all_tokens else None
        train = self._tokenize(splits.train, tokenizer, data, column, "train", continuation)
        validation = self._tokenize(splits.validation, tokenizer, data, column, "validation")
        return train, validation, self.collator(tokenizer, data)

    def collator(self, tokenizer, data):
        return _Collator(tokenizer)

    def input_column(self, data) -> str:
        return data.text_column_name or "tokens"

    def literal(self, text: str):
        return text.split()  # words as whitespace separates them

    def label_feature(self, label_names: list[str]):
        from datasets import ClassLabel, List

        return List(ClassLabel(names=list(label_names)))

    def probabilities(self, logits, features: list[dict]) -> list:
        """Per word: the first sub-token's tag probabilities (prepare_inputs' word_ids; for labelled features the
        positions whose label is not -100). Words cut off by max_seq_length get none."""
        import torch

        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        out = []
        for row, f in zip(probs, features):
            if WORD_IDS in f:
                ids = f[WORD_IDS]
                first = [j for j, w in enumerate(ids) if w >= 0 and (j == 0 or ids[j - 1] != w)]
            else:
                first = [j for j, lab in enumerate(f["labels"]) if lab != IGNORE]
            out.append(row[first])
        return out

    def prediction(self, probs, label_names: list[str], top_k: int | None) -> dict:
        best = probs.argmax(-1) if len(probs) else []
        return {"tags": [label_names[i] for i in best], "scores": [float(probs[j, i]) for j, i in enumerate(best)]}

    def prepare_inputs(self, dataset, tokenizer, data):
        """Word lists -> tokens, plus a `word_ids` column (each token's word index, -1 for special tokens) to map
        the predictions back to words; the task's collator leaves that column out of the batch."""
        return self._tokenize(dataset, tokenizer, data, _text_column(dataset, data), "input", labelled=False)

    # ------------------------------------------------------------------------------------------ metrics / card

    def metrics_for(self, label_names: list[str], processor=None):
        return partial(seqeval_metrics, label_names=list(label_names))

    def preprocess_logits_for_metrics(self, logits, labels):
        """Tag ids instead of logits: the Trainer accumulates (examples, tokens) ids, not (examples, tokens, tags)
        floats."""
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits.argmax(-1)

    def describe_preprocessing(self, tokenizer, data) -> str:
        labels = ("every sub-token of a word carries its tag (B- continues as I-) in training, the first only in "
                  "evaluation" if data.label_all_tokens else "the first sub-token of each word carries its tag, the "
                  "rest are ignored")
        return (f"{type(tokenizer).__name__} on pre-split words (is_split_into_words), {labels}; "
                f"max_seq_length={data.max_seq_length}, dynamic padding")


def _model_type(model_section, path: str, kwargs: dict) -> str | None:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_section.config_name or path, **kwargs).model_type
    except (OSError, ValueError):
        return None
