"""The Task contract: everything that differs between task families lives behind it.

A task owns its Auto class, its data (folder layout, label encoding, preprocessing for training and for
unlabelled inputs at prediction time), its collator, its metrics, what "augmentation on" means, how a run
of it is described and loaded in the model card, and the PEFT task type. The training flow, the trainer, the
outputs and the adapters call these methods and never name a task.

Required: the class attributes `name` (the recipe's `task:` value, also the Hub pipeline tag) and `auto_model`
(a transformers Auto class), and four methods -- `load_processor`, `prepare`, `prepare_inputs` and
`input_column`. Everything else is an optional hook with a default (no labels, eval loss as the only metric,
the plain Trainer, ...): override what your task does differently. `labels.ClassificationTask` brings labels,
a head sized from them and accuracy / macro-F1 for tasks with one class per example.

The template is `hftl/tasks/text_classification.py`; the smallest task that trains:

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hftl.tasks import register_task
    from hftl.tasks.labels import ClassificationTask

    @register_task
    class MyTask(ClassificationTask):
        name = "my-task"
        auto_model = AutoModelForSequenceClassification

        def load_processor(self, model_section, path, data):
            return AutoTokenizer.from_pretrained(path)

        def prepare(self, splits, processor, data, model=None):
            tokenize = lambda batch: processor(batch["text"], truncation=True, max_length=data.max_seq_length)
            train, validation = (ds.map(tokenize, batched=True, remove_columns=["text"])
                                 for ds in (splits.train, splits.validation))
            return train, validation, self.collator(processor, data)

        def prepare_inputs(self, dataset, processor, data):
            return dataset.map(lambda b: processor(b["text"], truncation=True), batched=True, remove_columns=["text"])

        def input_column(self, data):
            return "text"

        def collator(self, processor, data):
            return DataCollatorWithPadding(processor)

Methods get recipe sections (`data`, `model`) and datasets, never the whole recipe. Registering a name that is
taken (a built-in one too) raises; the built-in tasks register themselves the same way (hftl/tasks/__init__.py
imports them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from hftl.errors import HftlError, did_you_mean
from hftl.hooks import find_head


class Task(ABC):
    name: ClassVar[str]
    auto_model: ClassVar[Any]  # transformers Auto class; `from_pretrained(path, config=...)`
    peft_task_type: ClassVar[str | None] = None  # peft.TaskType name, or None for PEFT's plain wrapper
    prompt_learning: ClassVar[bool] = False  # prompt-learning PEFT methods (virtual tokens: prefix/prompt tuning) work
    # What compute_metrics returns -> how the card and curves.png name it; the first is the headline metric.
    metric_names: ClassVar[dict[str, str]] = {}
    example_input: ClassVar[str] = '"..."'  # a Python expression the task's pipeline() takes, for the card
    example_imports: ClassVar[tuple[str, ...]] = ()  # import lines example_input needs
    pipeline_options: ClassVar[str] = ""  # extra pipeline() arguments for the card, e.g. ", truncation=True"
    processor_arg: ClassVar[tuple[str, str]] = ("processor", "AutoProcessor")  # pipeline() kwarg, its Auto class
    folder_layout: ClassVar[str] = "<label>/<file>"  # what data.train_dir holds, for error messages
    label_column: ClassVar[str | None] = None  # data.label_column_name's default; None: no labels (generative)
    folder_files: ClassVar[str] = "data"  # what kind of files those are ("image", "audio")
    input_suffixes: ClassVar[tuple[str, ...]] = ()  # files `hftl predict` takes (empty: literal texts only)
    reads_plain_text: ClassVar[bool] = False  # data.train_file may be a .txt file (datasets' text loader)
    pipeline_tag: ClassVar[str | None] = None  # the Hub's pipeline tag, when it is not `name` (causal-lm: text-generation)
    # The model's loss is a sum over tokens that the Trainer may normalise by the batch's token count
    # (num_items_in_batch); classification losses are per-example means and must not be.
    token_loss: ClassVar[bool] = False
    # The model writes text (hftl predict generates; eval, ensembles and the ONNX exports, which score class
    # probabilities, do not apply).
    generates: ClassVar[bool] = False
    # The labels are text the model reads (zero-shot): `hftl predict --labels` may name others.
    open_labels: ClassVar[bool] = False
    # The ways `hftl export` writes a run of this task (runs/export.py).
    exports: ClassVar[tuple[str, ...]] = ("merge", "onnx", "int8", "prune")

    # ------------------------------------------------------------------------------------------ data

    def load_folder(self, folders: dict[str, str]):
        """{split: data.train_dir / validation_dir} -> a DatasetDict. Tasks without a folder layout refuse it."""
        raise HftlError(f"Recipe key 'data.train_dir': task {self.name} does not read folders; give data.train_file "
                        "or data.dataset_name.")

    def encode_labels(self, train, validation, column: str | None):
        """(train, validation or None, label_names): labels as ids, the same names for both splits. Default: a task
        without labels (language modelling) keeps its rows as they are."""
        return train, validation, []

    def config_kwargs(self, label_names: list[str]) -> dict:
        """Keys for AutoConfig.from_pretrained (the head's size and names)."""
        return {}

    # ------------------------------------------------------------------------------------------ model

    def model_class(self, data):
        """The Auto class that builds (and reloads) the model for this data; `auto_model` unless the data says
        otherwise (audio as spectrogram images trains an image classifier)."""
        return self.auto_model

    def reload_base(self, model, output_dir) -> None:
        """Fit a base model rebuilt from the recipe to what the run saved, before its adapter loads onto it
        (generative tasks: the embeddings grown for new special tokens)."""

    def configure_model(self, model, model_section) -> None:
        """Task-specific changes to the freshly loaded model, before the strategy and PEFT see it (e.g. a
        feature encoder frozen for the whole run: parameters with requires_grad False never become candidates)."""

    # ------------------------------------------------------------------------------------------ processor

    @abstractmethod
    def load_processor(self, model_section, path: str, data):
        """The checkpoint's own tokenizer / image processor / feature extractor."""

    def portable_processor(self, processor, data, model):
        """The processor the run evaluates with and saves (so plain transformers loads preprocess the same)."""
        return processor

    # ------------------------------------------------------------------------------------------ preprocessing

    @abstractmethod
    def prepare(self, splits, processor, data, model=None):
        """(train_dataset, eval_dataset, collator) for the Trainer; bad data raises HftlError here."""

    @abstractmethod
    def prepare_inputs(self, dataset, processor, data):
        """Unlabelled inputs (the data's input columns only) -> a dataset the collator batches for prediction."""

    def augmenting(self, data) -> bool:
        """Whether training sees random transforms (then backbone features cannot be cached)."""
        return False

    def collator(self, processor, data):
        """Batches what prepare / prepare_inputs return (the one prepare hands the Trainer)."""
        from transformers import default_data_collator

        return default_data_collator

    # ------------------------------------------------------------------------------------------ prediction

    @abstractmethod
    def input_column(self, data) -> str:
        """The column holding the model's input (image or clip paths, texts, word lists)."""

    def literal(self, text: str):
        """The input column's value for a literal `hftl predict` argument, or None if the task takes files only."""
        return None

    def label_feature(self, label_names: list[str]):
        """The datasets feature of a labelled column with these names (to encode new labelled data like the run's)."""
        from datasets import ClassLabel

        return ClassLabel(names=list(label_names))

    def training_loss(self, model, inputs: dict):
        """The loss of one training step on a collated batch (the pre-flight runs it before training): the model's
        own `loss` by default; a task with a Trainer of its own (trainer_classes) computes it as that Trainer does."""
        out = model(**inputs)
        return out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)

    def logits(self, model, inputs: dict):
        """The model's class scores for a collated batch (prediction, evaluation reports): its `.logits`."""
        return model(**inputs).logits

    def prediction_collator(self, processor, data, label_names: list[str]):
        """The collator of prediction batches (`prepare_inputs`' rows) for these labels; `collator` by default."""
        return self.collator(processor, data)

    def probabilities(self, logits, features: list[dict]) -> list:
        """Per input, the probabilities the prediction is made of: (classes,) here; per word for NER. Ensembles
        average these."""
        import torch

        return list(torch.softmax(logits.float(), dim=-1).cpu().numpy())

    def prediction(self, probs, label_names: list[str], top_k: int | None) -> dict:
        """One input's output line (without "input"): label, score and the top-k scores by label name."""
        import numpy as np

        order = np.argsort(-probs)[: top_k or len(label_names)]
        return {"label": label_names[order[0]], "score": float(probs[order[0]]),
                "scores": {label_names[i]: float(probs[i]) for i in order}}

    # ------------------------------------------------------------------------------------------ metrics / card

    def metrics_for(self, label_names: list[str], processor=None):
        """The Trainer's compute_metrics for a run with these labels (keys as in metric_names; the Trainer adds
        the eval_ prefix). Bind what the metrics need (token classification: the tag names; seq2seq: the
        tokenizer that decodes the generated ids) here, not on the task, whose one instance every run shares.
        Default None: the Trainer's eval_loss is all (no logits gathered)."""
        return None

    preprocess_logits_for_metrics = None  # or a method (logits, labels) -> what compute_metrics gets

    def adapter_modules(self, model) -> list[str]:
        """Module paths PEFT trains and saves beside the adapter (modules_to_save): the new task head; a task
        whose head is the checkpoint's own returns only what it changed (embeddings grown for new tokens)."""
        return find_head(model)

    def peft_targets(self, model) -> str | list[str] | None:
        """PEFT's target_modules when the recipe names none (a regex or names); None: the attention query/value
        projections found in the model."""
        return None

    def file_inputs(self, ds, path) -> tuple[list, list[str]] | None:
        """For a task whose input spans several columns (messages + images): the inputs of a data file given to
        `hftl predict`, one per row, and what each row's "input" shows. None: the input column's values."""
        return None

    def finish_metrics(self, metrics: dict) -> None:
        """Add metrics derived from the Trainer's own (in place, on every evaluation's logs): e.g. perplexity
        from eval_loss, which needs no logits gathered."""

    def loss_tokens(self, labels) -> int | None:
        """For a `token_loss` task: how many label positions the model's loss averages over in this batch (so
        eval_loss is the mean over tokens, not over batches, whatever the eval batch size). None: per example."""
        return None

    def trainer_classes(self):
        """(Trainer base class, TrainingArguments class): Seq2SeqTrainer for generation-based evaluation."""
        from transformers import Trainer, TrainingArguments

        return Trainer, TrainingArguments

    def training_defaults(self, data, generation) -> dict:
        """TrainingArguments values the task sets unless the recipe does (seq2seq: predict_with_generate)."""
        return {}

    def report(self, model, processor, data, generation) -> tuple[list[str], dict[str, str]]:
        """What the task adds after training (e.g. sampled completions, `generation`: the recipe's section or
        None): (markdown lines for the card, {file name: text} the run writes into its output dir)."""
        return [], {}

    def describe_preprocessing(self, processor, data) -> str:
        return type(processor).__name__

    def usage(self, data, adapter: bool = False, label_names=()) -> list[str] | None:
        """Card lines that load and run the model (`adapter`: a PEFT adapter run) when `pipeline(self.name, ...)`
        cannot: imports, an empty line, then code that uses `model_id` (the card defines it there). None: the
        card's pipeline() snippet."""
        return None

    def adapter_usage(self, labels_kwargs: str) -> list[str]:
        """Card lines that load the base model + adapter with PEFT and build `classifier = pipeline(...)`."""
        arg, cls = self.processor_arg
        auto = self.auto_model.__name__  # model_class(data) for data-dependent tasks: override this method
        return [
            "from peft import PeftConfig, PeftModel", f"from transformers import {cls}, {auto}, pipeline", "",
            "config = PeftConfig.from_pretrained(model_id)", f"base = {auto}.from_pretrained(",
            f"    config.base_model_name_or_path{labels_kwargs}, ignore_mismatched_sizes=True)",
            "model = PeftModel.from_pretrained(base, model_id)",
            f'classifier = pipeline("{self.pipeline_tag or self.name}", model=model, {arg}={cls}.from_pretrained(model_id){self.pipeline_options})']


_REGISTRY: dict[str, Task] = {}


def register_task(task):
    """Register a Task subclass (usable as a class decorator) or instance under its `name`; a name that is
    taken (a built-in one too) is refused."""
    instance = task() if isinstance(task, type) else task
    if not isinstance(instance, Task):
        raise TypeError(f"register_task takes a hftl.tasks.Task subclass, not {type(instance).__name__}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{type(instance).__name__} has no `name`")
    if name in _REGISTRY:
        raise ValueError(f"A task named {name!r} is already registered ({type(_REGISTRY[name]).__name__}).")
    _REGISTRY[name] = instance
    return task


def task_names() -> list[str]:
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        names = task_names()
        raise HftlError(f"Unknown task '{name}'; allowed: {', '.join(names)}.{did_you_mean(name, names)}")
    return _REGISTRY[name]
