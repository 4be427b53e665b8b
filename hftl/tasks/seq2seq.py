"""Sequence-to-sequence generation (summarization, translation, any text -> text): any AutoModelForSeq2SeqLM
(T5, BART, mT5), as HF's run_summarization trains it.

Source and target columns are `data.text_column` / `data.summary_column` (defaults: the first of text /
document / article / source, and of summary / target / highlights); `data.source_prefix` goes before every
source (T5's "summarize: "). Sources are cut at `data.max_source_length`, targets at `data.max_target_length`.
Evaluation generates (Seq2SeqTrainer's predict_with_generate, max_target_length tokens, generation.num_beams)
and scores with ROUGE (Google's rouge-score, the scorer of run_summarization) and exact match.
"""

from __future__ import annotations

import numpy as np
from transformers import AutoModelForSeq2SeqLM

from hftl.errors import HftlError, did_you_mean
from hftl.tasks.base import Task, register_task
from hftl.tasks.generative import IGNORE, GenerativeTask, add_perplexity, grow_vocabulary

_SOURCES = ("text", "document", "article", "source")
_TARGETS = ("summary", "target", "highlights")
EXAMPLE = "The tower is 324 metres tall, about the same height as an 81-storey building."
ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _column(ds, given: str | None, defaults, key: str) -> str:
    columns = ds.column_names
    if given is not None:
        if given not in columns:
            raise HftlError(f"Recipe key 'data.{key}': column '{given}' not in the data; columns are: "
                            f"{', '.join(columns)}.{did_you_mean(given, columns)}")
        return given
    found = next((c for c in defaults if c in columns), None)
    if found is None:
        raise HftlError(f"Recipe key 'data.{key}' is needed: no column {' / '.join(defaults)}; columns are: "
                        f"{', '.join(columns)}.")
    return found


def _texts(ds, column: str, split: str, key: str):
    values = ds[column]
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            what = "an empty" if isinstance(v, str) else f"a non-text ({v!r})"
            raise HftlError(f"Column '{column}' (data.{key}) has {what} value at {split} row {i}; drop or fill such rows.")
    return values


@register_task
class Seq2Seq(GenerativeTask, Task):
    name = "seq2seq"
    pipeline_tag = "text2text-generation"
    auto_model = AutoModelForSeq2SeqLM
    peft_task_type = "SEQ_2_SEQ_LM"
    metric_names = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "exact_match": "exact match"}
    example_input = repr(EXAMPLE)

    def portable_processor(self, tokenizer, data, model):
        grow_vocabulary(model, tokenizer)
        tokenizer.model_max_length = data.max_source_length
        return tokenizer

    def trainer_classes(self):
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

        return Seq2SeqTrainer, Seq2SeqTrainingArguments

    def training_defaults(self, data, generation) -> dict:
        return {"predict_with_generate": True, "generation_max_length": data.max_target_length,
                "generation_num_beams": generation.num_beams if generation else 1}

    # ------------------------------------------------------------------------------------------ preprocessing

    def _tokenize(self, ds, tokenizer, data, split: str, targets: bool = True):
        source = _column(ds, data.text_column, _SOURCES, "text_column")
        texts = [data.source_prefix + t for t in _texts(ds, source, split, "text_column")]
        enc = tokenizer(texts, max_length=data.max_source_length, truncation=True)
        rows = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if targets:
            target = _column(ds, data.summary_column, _TARGETS, "summary_column")
            summaries = _texts(ds, target, split, "summary_column")
            rows["labels"] = tokenizer(text_target=list(summaries), max_length=data.max_target_length,
                                       truncation=True)["input_ids"]
        from datasets import Dataset

        return Dataset.from_dict(rows)

    def prepare(self, splits, tokenizer, data, model=None):
        train = self._tokenize(splits.train, tokenizer, data, "train")
        validation = self._tokenize(splits.validation, tokenizer, data, "validation")
        return train, validation, self.collator(tokenizer, data)

    def collator(self, tokenizer, data):
        from transformers import DataCollatorForSeq2Seq

        # the model builds decoder_input_ids from the labels (shifted right once, inside its forward)
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)

    def prepare_inputs(self, dataset, tokenizer, data):
        return self._tokenize(dataset, tokenizer, data, "input", targets=False)

    def input_column(self, data) -> str:
        return data.text_column or "text"

    def literal(self, text: str):
        return text

    # ------------------------------------------------------------------------------------------ metrics / card

    def metrics_for(self, label_names, processor=None):
        tokenizer = processor

        def compute(eval_pred):
            preds, labels = eval_pred
            preds = preds[0] if isinstance(preds, tuple) else preds
            preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
            labels = np.where(labels == IGNORE, tokenizer.pad_token_id, labels)
            return text_scores(tokenizer.batch_decode(preds, skip_special_tokens=True),
                               tokenizer.batch_decode(labels, skip_special_tokens=True))

        return compute

    def finish_metrics(self, metrics: dict) -> None:
        add_perplexity(metrics)

    def loss_tokens(self, labels) -> int:
        return int((labels != IGNORE).sum())

    def encode_prompt(self, tokenizer, data, prompt: str) -> list[int]:
        return tokenizer(data.source_prefix + prompt, max_length=data.max_source_length, truncation=True)["input_ids"]

    def describe_preprocessing(self, tokenizer, data) -> str:
        prefix = f", source prefix {data.source_prefix!r}" if data.source_prefix else ""
        return (f"{type(tokenizer).__name__}, max_source_length={data.max_source_length}, "
                f"max_target_length={data.max_target_length}{prefix}; evaluation generates")

    def usage(self, data, adapter=False, label_names=()):
        auto = "AutoPeftModelForSeq2SeqLM" if adapter else "AutoModelForSeq2SeqLM"
        imports = ["from peft import AutoPeftModelForSeq2SeqLM", "from transformers import AutoTokenizer"] if adapter \
            else ["from transformers import AutoModelForSeq2SeqLM, AutoTokenizer"]
        return [*imports, "", "tokenizer = AutoTokenizer.from_pretrained(model_id)",
                f"model = {auto}.from_pretrained(model_id)",
                f"inputs = tokenizer({data.source_prefix + EXAMPLE!r}, return_tensors=\"pt\", "
                "truncation=True)",
                f"print(tokenizer.decode(model.generate(**inputs, max_new_tokens={data.max_target_length})[0], "
                "skip_special_tokens=True))"]


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures (x100, as run_summarization reports them; rougeLsum splits sentences at newlines)
    and exact match (whitespace-normalised) of generated texts against references. The plain mean, not
    rouge-score's bootstrap aggregate, which draws from numpy's global random state."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    scores = [scorer.score(r.strip(), p.strip()) for p, r in zip(predictions, references)]
    out = {k: round(100 * float(np.mean([s[k].fmeasure for s in scores])) if scores else 0.0, 4) for k in ROUGE}
    out["exact_match"] = round(100 * float(np.mean([" ".join(p.split()) == " ".join(r.split())
                                                     for p, r in zip(predictions, references)])), 4)
    out["gen_len"] = float(np.mean([len(p.split()) for p in predictions])) if predictions else 0.0
    return out
