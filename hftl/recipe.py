"""The recipe: YAML safe-load, dotted overrides, a typed (pydantic v2) schema and clear errors.

Only this module reads YAML. Every other module gets a validated, frozen `Recipe`.
Names follow the transformers example scripts (ModelArguments / DataTrainingArguments) and
`training:` is passed to `transformers.TrainingArguments` as is.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hftl import zoo
from hftl.errors import RecipeError, did_you_mean, unknown_key

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

PRESETS = ("feature_extraction", "partial", "full", "auto")
AUTO_TASKS = ("text-classification", "image-classification", "audio-classification")  # what preset auto serves


# YAML 1.1's boolean words: recipes read them as strings (YAML 1.2), and a field that takes only a boolean
# still accepts them (pydantic does for its bool fields; _bool_words does it for TrainingArguments').
_YAML11_BOOLS = {w: True for w in ("yes", "Yes", "YES", "on", "On", "ON")} | {
    w: False for w in ("no", "No", "NO", "off", "Off", "OFF")}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _zoo_alias(value: str | None, table: dict, kind: str) -> str | None:
    """A `zoo:` name must be a known alias: say so at load time, not after the data has loaded."""
    if isinstance(value, str) and value.startswith(zoo.PREFIX) and value[len(zoo.PREFIX):] not in table:
        names = [zoo.PREFIX + k for k in table]
        raise ValueError(f"unknown zoo {kind} {value!r}.{did_you_mean(value, names)} Available: {', '.join(names)}")
    return value


# ----------------------------------------------------------------------------------------------- model / data


class ModelSection(Section):
    model_name_or_path: str = Field(description="Hub id, local folder, `timm/<name>` or `zoo:<alias>`.")
    model_revision: str = Field("main", description="Branch, tag or commit of the checkpoint.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint. Off unless you trust it.")
    ignore_mismatched_sizes: bool = Field(True, description="Replace a pretrained head whose size differs from the labels.")
    config_name: str | None = Field(None, description="Config to use instead of the checkpoint's.")
    tokenizer_name: str | None = Field(None, description="Tokenizer to use instead of the checkpoint's.")
    image_processor_name: str | None = Field(None, description="Image processor to use instead of the checkpoint's.")
    feature_extractor_name: str | None = Field(None, description="Audio feature extractor to use instead of the "
                                               "checkpoint's.", json_schema_extra={"tasks": ["audio-classification"]})
    freeze_feature_encoder: bool | None = Field(
        None, description="Keep the convolutional feature encoder of speech models (Wav2Vec2, HuBERT, WavLM) frozen "
        "for the whole run. Default: true for models that have one.", json_schema_extra={"tasks": ["audio-classification"]})
    cache_dir: str | None = Field(None, description="Where downloaded checkpoints are cached.")
    extra_special_tokens: list[str] | None = Field(
        None, description="Generative tasks: tokens added to the vocabulary as special tokens; the embeddings grow "
        "and train (with PEFT they are saved with the adapter).", json_schema_extra={"tasks": ["causal-lm", "seq2seq"]})
    pooling: Literal["auto", "default", "mean", "cls"] = Field(
        "auto", description="Sentence pooling for BERT-style text models: auto (the checkpoint's own, from a "
        "sentence-transformers 1_Pooling/config.json), default (the model's pooler), mean or cls.")

    @field_validator("model_name_or_path")
    @classmethod
    def _zoo_model(cls, v):
        return _zoo_alias(v, zoo.MODELS, "model")

    @model_validator(mode="before")
    @classmethod
    def _revision_alias(cls, data):
        # `revision` was hftl's own name; the example scripts' ModelArguments call it model_revision.
        if isinstance(data, dict) and "revision" in data:
            data = dict(data)
            if "model_revision" in data:
                raise ValueError("give model.model_revision only (model.revision is its deprecated alias)")
            logging.getLogger("hftl").warning(
                "Recipe key 'model.revision' is deprecated: use model.model_revision (the transformers example "
                "scripts' name); it still works for now.")
            data["model_revision"] = data.pop("revision")
        return data


_POLICY = re.compile(r"^(?:(?:rand|augmix)(?:-[a-z]+[\d.]*)*|(?:original|originalr|v0|v0r|3a)(?:-mstd[\d.]+)?|trivial)$")


class AugmentSection(Section):
    random_resized_crop: bool = Field(True, description="RandomResizedCrop to the model's input size (else resize + center crop).")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="Area range of RandomResizedCrop.")
    horizontal_flip: bool = Field(True, description="Random horizontal flip.")
    color_jitter: float = Field(0.0, ge=0.0, description="Brightness/contrast/saturation jitter strength (0 = off).")
    policy: str | None = Field(None, description="An automatic augmentation policy, in timm's strings: "
                               "rand-m9-mstd0.5 (RandAugment), augmix-m5-w3 (AugMix), original / 3a (AutoAugment), "
                               "or trivial (TrivialAugmentWide).")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="Probability of timm's RandomErasing (per-pixel "
                                  "noise in a random box, after normalisation; 0 = off).")

    @field_validator("policy")
    @classmethod
    def _policy(cls, v):
        if v is None or _POLICY.match(v):
            return v
        raise ValueError(f"{v!r} is not an augmentation policy; allowed: rand-<options> (e.g. rand-m9-mstd0.5), "
                         "augmix-<options> (e.g. augmix-m5-w3), original, originalr, v0, v0r, 3a (AutoAugment, "
                         "optionally -mstd0.5), trivial")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v):
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("must be two numbers 0 < low <= high <= 1")
        return v


class SpectrogramSection(Section):
    """Log-mel spectrogram images for image backbones (data.audio_features: log_mel)."""

    sampling_rate: PositiveInt = Field(16000, description="Clips are resampled to this rate first.")
    n_mels: PositiveInt = Field(128, description="Mel bands (the image height).")
    n_fft: PositiveInt | None = Field(None, description="FFT size (default: next power of two >= win_length).")
    win_length: PositiveInt | None = Field(None, description="Window in samples (default 25 ms).")
    hop_length: PositiveInt | None = Field(None, description="Hop in samples (default 10 ms; the image width is one column per hop).")
    f_min: float = Field(0.0, ge=0, description="Lowest mel frequency (Hz).")
    f_max: PositiveFloat | None = Field(None, description="Highest mel frequency (Hz; default sampling_rate / 2).")
    top_db: PositiveFloat = Field(80.0, description="dB range below each clip's peak mapped to 0..255.")


class DataSection(Section):
    dataset_name: str | None = Field(None, description="Hub dataset id, `datasets.save_to_disk` folder, or `zoo:<alias>`.")
    dataset_config_name: str | None = Field(None, description="Configuration of the dataset.")
    train_dir: str | None = Field(None, description="Image folder (imagefolder layout: <label>/<file>) for training.")
    validation_dir: str | None = Field(None, description="Image folder for evaluation.")
    train_file: str | None = Field(None, description="csv / json / jsonl / parquet file for training.")
    validation_file: str | None = Field(None, description="csv / json / jsonl / parquet file for evaluation.")
    train_split_name: str = Field("train", description="Split used for training.")
    validation_split_name: str | None = Field(None, description="Split used for evaluation (default: validation, then test).")
    train_val_split: float = Field(0.15, gt=0, lt=1, description="Fraction of train held out when there is no validation set.")
    max_train_samples: PositiveInt | None = Field(None, description="Truncate the training set (after a seeded shuffle).")
    max_eval_samples: PositiveInt | None = Field(None, description="Truncate the evaluation set.")
    image_column_name: str = Field("image", description="Column holding the images.",
                                   json_schema_extra={"tasks": ["image-classification"]})
    text_column_names: list[str] | None = Field(
        None, description="Text column(s); two columns make a sentence pair. Default: `sentence`/`text`.",
        json_schema_extra={"tasks": ["text-classification"]})
    label_column_name: str | None = Field(None, description="Column holding the labels (strings or ints; per word for "
                                          "token classification). Default: label, ner_tags for token classification.")
    text_column_name: str | None = Field(None, description="Token classification: the column of word lists (default "
                                         "tokens). Causal LM: the text column (default text).",
                                         json_schema_extra={"tasks": ["token-classification", "causal-lm"]})
    label_all_tokens: bool = Field(False, description="Token classification: every sub-token of a word carries its label "
                                   "(default: the first only, the rest are ignored).", json_schema_extra={"tasks": ["token-classification"]})
    audio_column_name: str = Field("audio", description="Column holding the audio (file paths, or a datasets Audio "
                                   "column).", json_schema_extra={"tasks": ["audio-classification"]})
    max_duration_seconds: PositiveFloat | None = Field(
        None, description="Audio: random crop of this length at train time (whole clips at evaluation); with "
        "audio_features: log_mel also the spectrogram width (shorter clips padded with silence).", json_schema_extra={"tasks": ["audio-classification"]})
    audio_features: Literal["raw", "log_mel"] = Field(
        "raw", description="Audio: raw (the checkpoint's feature extractor) or log_mel (spectrogram images for an "
        "image-classification checkpoint, timm or transformers).", json_schema_extra={"tasks": ["audio-classification"]})
    spectrogram: SpectrogramSection = Field(default_factory=SpectrogramSection, description="Log-mel settings "
                                            "(audio_features: log_mel).", json_schema_extra={"tasks": ["audio-classification"]})
    max_seq_length: PositiveInt = Field(128, description="Tokens kept per example (longer text is truncated); with "
                                        "data.packing the length of every block.")
    packing: bool = Field(False, description="Causal LM: concatenate the tokenized examples and cut them into full "
                          "blocks of max_seq_length (labels travel with their tokens, so prompt masking survives).",
                          json_schema_extra={"tasks": ["causal-lm"]})
    sample_by: Literal["line", "paragraph", "document"] = Field(
        "line", description="Causal LM, .txt files: one document per line, per blank-line separated paragraph, or the "
        "whole file (datasets' text loader).", json_schema_extra={"tasks": ["causal-lm"]})
    text_column: str | None = Field(None, description="Seq2seq: the source text column (default: the first of text, "
                                    "document, article, source).", json_schema_extra={"tasks": ["seq2seq"]})
    summary_column: str | None = Field(None, description="Seq2seq: the target text column (default: the first of "
                                       "summary, target, highlights).", json_schema_extra={"tasks": ["seq2seq"]})
    source_prefix: str = Field("", description="Seq2seq: text put before every source (T5's 'summarize: ').",
                               json_schema_extra={"tasks": ["seq2seq"]})
    max_source_length: PositiveInt = Field(256, description="Seq2seq: source tokens kept (longer is truncated).",
                                           json_schema_extra={"tasks": ["seq2seq"]})
    max_target_length: PositiveInt = Field(64, description="Seq2seq: target tokens kept, and the generation length "
                                           "at evaluation.", json_schema_extra={"tasks": ["seq2seq"]})
    augment: AugmentSection = Field(default_factory=AugmentSection, description="Train-time image augmentation; `false` turns it off.")
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="Resize images straight to this size (`96` or `[height, width]`, no crop) instead of the "
                          "checkpoint's; mean, std and interpolation stay the checkpoint's. For small images or CPU runs.")

    @field_validator("dataset_name")
    @classmethod
    def _zoo_dataset(cls, v):
        return _zoo_alias(v, zoo.DATASETS, "dataset")

    @field_validator("text_column_names", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return [c.strip() for c in v.split(",")] if isinstance(v, str) else v

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v):
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_off(cls, v):
        v = _YAML11_BOOLS.get(v, v) if isinstance(v, str) else v
        if v is False:
            return {"random_resized_crop": False, "horizontal_flip": False, "color_jitter": 0.0}
        return {} if v is True or v is None else v

    @model_validator(mode="after")
    def _spectrogram_width(self):
        if self.audio_features == "log_mel" and self.max_duration_seconds is None:
            raise ValueError("data.audio_features: log_mel needs data.max_duration_seconds: it sets the spectrogram "
                             "width (e.g. 3 for clips of a few seconds)")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        sources = [self.dataset_name, self.train_dir, self.train_file]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "give exactly one data source: data.dataset_name, data.train_dir (image folders) "
                "or data.train_file (csv/json/jsonl/parquet)"
            )
        return self


# ----------------------------------------------------------------------------------------------- strategy


class FreezeSpec(Section):
    below_depth: NonNegativeInt | None = Field(None, description="Freeze every parameter whose depth is < k.")
    patterns: list[str] | None = Field(None, description="Freeze parameters whose names match (glob, or regex).")

    @model_validator(mode="after")
    def _one(self):
        if (self.below_depth is None) == (self.patterns is None):
            raise ValueError("give exactly one of below_depth or patterns")
        return self


class LrGroup(Section):
    name: str
    patterns: list[str]
    lr: PositiveFloat


class DiscriminativeLR(Section):
    layer_decay: float | None = Field(None, gt=0, le=1, description="lr(depth) = head_lr * decay ** (head_depth - depth).")
    head_lr: PositiveFloat | None = Field(None, description="LR of the head (default training.learning_rate).")
    backbone_lr: PositiveFloat | None = Field(None, description="LR at depth 0; depths in between are geometric.")
    lr_groups: list[LrGroup] | None = Field(None, description="Explicit groups; unmatched parameters get training.learning_rate.")

    @model_validator(mode="after")
    def _one_mode(self):
        if self.lr_groups is not None and any(v is not None for v in (self.layer_decay, self.head_lr, self.backbone_lr)):
            raise ValueError("lr_groups cannot be combined with layer_decay/head_lr/backbone_lr")
        if self.layer_decay is not None and self.backbone_lr is not None:
            raise ValueError("give layer_decay or backbone_lr, not both")
        if self.lr_groups is None and all(v is None for v in (self.layer_decay, self.head_lr, self.backbone_lr)):
            raise ValueError("give layer_decay, head_lr (+ backbone_lr) or lr_groups")
        return self


class GradualUnfreezing(Section):
    every_epochs: PositiveInt | None = Field(None, description="Unfreeze one more depth group (head down) every N epochs.")
    every_steps: PositiveInt | None = Field(None, description="Unfreeze one more depth group every N optimizer steps.")
    schedule: dict[NonNegativeInt, list[int | str]] | None = Field(
        None, description="{epoch (or step): [depth | 'head' | 'all', ...]}: groups that become trainable then."
    )
    by: Literal["epoch", "step"] = Field("epoch", description="Unit of the schedule's keys.")

    @field_validator("schedule", mode="before")
    @classmethod
    def _listify(cls, v):
        if isinstance(v, dict):
            return {k: (x if isinstance(x, list) else [x]) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.every_epochs, self.every_steps, self.schedule)) != 1:
            raise ValueError("give exactly one of every_epochs, every_steps or schedule")
        return self


class Reinit(Section):
    from_depth: NonNegativeInt | None = Field(None, description="Re-initialise every block at depth >= k (not the head).")
    patterns: list[str] | None = Field(None, description="Re-initialise modules whose names match.")

    @model_validator(mode="after")
    def _one(self):
        if (self.from_depth is None) == (self.patterns is None):
            raise ValueError("give exactly one of from_depth or patterns")
        return self


class LayerMapOverride(Section):
    blocks: str = Field(description=r"Regex whose first group numbers the blocks, e.g. 'encoder\.layer\.(\d+)\.'.")
    head: list[str] | None = Field(None, description="Patterns of the task head's parameters.")


class StrategySection(Section):
    preset: Literal["feature_extraction", "partial", "full", "auto"] | None = Field(
        None, description="feature_extraction (frozen backbone), partial (lower half frozen), full, or auto (chosen "
        "before training from the data's size per class, a linear probe on the frozen features and the input "
        "statistics' distance from the backbone's: hftl/auto_strategy.py); explicit keys override a preset."
    )
    freeze: Literal["none", "backbone"] | FreezeSpec | None = Field(None, description="What starts (and stays) frozen.")
    unfreeze: list[str] = Field(default_factory=list, description="Patterns kept trainable whatever `freeze` says.")
    freeze_batchnorm: bool | None = Field(
        None, description="Keep every BatchNorm in eval mode. Default: only in frozen layers (always)."
    )
    discriminative_lr: DiscriminativeLR | None = None
    gradual_unfreezing: GradualUnfreezing | None = None
    reinit: Reinit | None = None
    layer_map: LayerMapOverride | None = Field(None, description="Override the automatic layer map.")
    cache_features: Literal["auto"] | bool = Field(
        "auto", description="Compute frozen-backbone features once and train the head on them (auto: when the "
        "whole backbone stays frozen and augmentation is off).")

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed: {', '.join(PRESETS)}.{did_you_mean(v, PRESETS)}")
        return v

    @model_validator(mode="after")
    def _apply_preset(self):
        # A preset only fills what the recipe left unset, so explicit keys always win. `partial` leaves
        # `freeze` unset: the lower half of the blocks is resolved against the layer map at build time.
        defaults = {
            "feature_extraction": {"freeze": "backbone", "freeze_batchnorm": True},
            "full": {"freeze": "none", "freeze_batchnorm": False},
        }.get(self.preset, {})
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.freeze is None and self.preset not in ("partial", "auto"):
            object.__setattr__(self, "freeze", "none")
        return self


# ----------------------------------------------------------------------------------------------- peft / hub


class PeftSection(BaseModel):
    """`method` plus the PEFT config class's own keys (checked against that class when the recipe loads)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str = Field(description="lora, dora, ia3, loha, lokr, prefix_tuning, prompt_tuning or any PeftType.")
    merge: bool = Field(False, description="Also write the base model with the adapter merged in (merged/).")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class HubSection(Section):
    push: bool = Field(False, description="Push the result to the Hub when training ends.")
    repo_id: str | None = Field(None, description="user/name of the Hub repo.")
    private: bool = Field(True, description="Create the repo private.")
    revision: str | None = Field(None, description="Branch to push to (created if missing).")
    commit_message: str = Field("Upload with hftl", description="Commit message.")
    upload: Literal["adapter", "merged", "both"] = Field("adapter", description="What to push for PEFT runs.")
    base_model: str | None = Field(
        None, description="Hub id of the base model, recorded in the pushed adapter config and card when "
                          "model.model_name_or_path is a local folder (zoo aliases know theirs).")
    strict: bool = Field(False, description="Refuse to push (before any upload) a run whose base model is known "
                                            "only by a local path, instead of warning.")

    @model_validator(mode="after")
    def _repo(self):
        if self.push and not self.repo_id:
            raise ValueError("hub.push is true but hub.repo_id is missing (e.g. repo_id: you/my-model)")
        return self


class RegularizationSection(Section):
    """Regularizers for small data: label smoothing (any classifier) and mixup / cutmix of image batches."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing: TrainingArguments' "
                                   "label_smoothing_factor, or folded into the mixed targets with mixup / cutmix.")
    mixup: float = Field(0.0, ge=0.0, description="Mixup alpha: image pairs and their targets mixed with a weight "
                         "drawn from Beta(alpha, alpha) (timm.data.Mixup; 0 = off).",
                         json_schema_extra={"tasks": ["image-classification"]})
    cutmix: float = Field(0.0, ge=0.0, description="CutMix alpha: a box of one image pasted into another, targets "
                          "mixed by area (0 = off). With mixup too, each batch is one or the other (switch_prob).",
                          json_schema_extra={"tasks": ["image-classification"]})
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="Share of training batches mixed.",
                            json_schema_extra={"tasks": ["image-classification"]})
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="With both: the share of mixed batches that use "
                               "cutmix.", json_schema_extra={"tasks": ["image-classification"]})

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


class EmaSection(Section):
    """An exponential moving average of the weights (timm.utils.ModelEmaV3), updated after every optimizer step;
    evaluation, the saved model and the card use the average."""

    decay: float = Field(0.999, gt=0.0, lt=1.0, description="ema = decay * ema + (1 - decay) * weights, every step.")
    update_after_step: NonNegativeInt = Field(0, description="Steps before averaging starts (the average follows the "
                                              "weights until then).")


class StudentFromTeacher(Section):
    layers: list[NonNegativeInt] = Field(min_length=1, description="The teacher's blocks the student keeps, e.g. "
                                         "[0, 2, 4] (DistilBERT: every other one).")


class DistillSection(Section):
    """Knowledge distillation: loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * task loss."""

    teacher: str = Field(description="An hftl run dir, a local checkpoint folder or a Hub id, with the data's labels.")
    temperature: float = Field(4.0, gt=0, description="Softening temperature T of both models' logits.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the distillation term (1 - alpha: the task loss).")
    student_from_teacher: StudentFromTeacher | None = Field(
        None, description="Start the student as a copy of the teacher with only these blocks (model.model_name_or_path "
        "then only supplies the processor, which must be the teacher's).")
    unlabeled: str | None = Field(
        None, description="A data file or folder of unlabelled inputs (a transfer set, in the training data's format): "
        "they join the training split and teach through the distillation term alone (DistilBERT, TinyBERT).")
    cache_teacher: Literal["auto"] | bool = Field(
        "auto", description="Run the teacher once over the training split before training and serve its logits from "
        "memory (auto: when the training inputs are the same every epoch: no augmentation, no mixup / cutmix).")


class SelfTrainingSection(Section):
    """Domain adaptation by pseudo-labels: train on the labelled data, label the unlabelled target rows the model
    is sure of, train again on both; repeat."""

    unlabeled: str = Field(description="The unlabelled target data: a file (csv/json/jsonl/parquet) or folder in the "
                           "recipe's data format, as `hftl eval --data` takes; a label column, if present, is never "
                           "trained on (it only scores the pseudo-labels).")
    threshold: float = Field(0.9, gt=0, lt=1, description="Keep a pseudo-label when the model's top class probability "
                             "is at least this.")
    rounds: PositiveInt = Field(3, description="Pseudo-labelling rounds after the first, labelled-data-only round; "
                                "each trains afresh from model.model_name_or_path on the labelled + pseudo-labelled rows.")
    max_fraction: float = Field(1.0, gt=0, le=1, description="At most this share of the unlabelled rows per round, "
                                "the most confident first.")
    target_eval: str | None = Field(None, description="Labelled target data (file or folder, as `unlabeled`) scored "
                                    "after every round; its rows must not be the unlabelled ones.")


class ReplaySection(Section):
    data: str | None = Field(None, description="Labelled old data (file or folder in the recipe's format); default: "
                             "the previous run's own training split.")
    fraction: float = Field(0.2, gt=0, le=1, description="Replay rows added, as a share of the new training rows "
                            "(a seeded sample of the old data, at most all of it).")


class EwcSection(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    lambda_: float = Field(1000.0, alias="lambda", gt=0, description="Penalty weight: lambda / 2 x sum_i F_i "
                           "(theta_i - theta_old_i)^2, F the diagonal Fisher on the old data.")
    samples: PositiveInt = Field(256, description="Old examples the Fisher is estimated on (once; stored in the "
                                 "previous run dir as ewc_fisher.safetensors).")


class ContinualSection(Section):
    """Continual fine-tuning: start from a previous run's weights, keep the old task with replay and/or EWC;
    old and new accuracy before and after go into the card (forgetting made visible)."""

    previous: str = Field(description="The hftl run dir to continue from (same task and labels, or see new_classes).")
    replay: ReplaySection | None = Field(None, description="Mix a sample of the old data into training.")
    ewc: EwcSection | None = Field(None, description="Elastic weight consolidation: penalize moving the weights the "
                                   "old task needs (not with peft, whose base does not train).")
    old_eval: str | None = Field(None, description="Labelled old data scored before and after; default: the "
                                 "previous run's validation split.")
    new_classes: bool = Field(False, description="Class-incremental: the data may bring classes the previous run "
                              "never saw. The head grows by one output per new class (initialised to the mean of the "
                              "old outputs, so the old predictions stay as they were); old classes keep their ids.")


class GenerationSection(Section):
    """Sampled completions after training (causal LM) and the decoding of generation-based evaluation (seq2seq)."""

    prompts: list[str] = Field(default_factory=list, description="Fixed prompts whose completions go into "
                               "samples.jsonl and the model card (base model and trained model side by side).")
    max_new_tokens: PositiveInt = Field(48, description="Tokens generated per prompt.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    num_beams: PositiveInt = Field(1, description="Beam search width (seq2seq evaluation; greedy or sampled if 1).")
    seed: int = Field(0, description="Seed of the sampling, so the samples are reproducible.")


# ----------------------------------------------------------------------------------------------- recipe


class Recipe(Section):
    task: str = Field(description="The task family: image-classification, text-classification, ... (hftl.tasks.task_names()).")
    model: ModelSection
    data: DataSection
    strategy: StrategySection = Field(default_factory=StrategySection)
    peft: PeftSection | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="transformers.TrainingArguments, verbatim.")
    hub: HubSection = Field(default_factory=HubSection)
    generation: GenerationSection | None = Field(None, description="Generative tasks: prompts sampled after training, "
                                                 "decoding settings.", json_schema_extra={"tasks": ["causal-lm", "seq2seq"]})
    regularization: RegularizationSection = Field(default_factory=RegularizationSection)
    distill: DistillSection | None = Field(None, description="Train on a teacher's softened predictions too.",
                                           json_schema_extra={"tasks": ["text-classification", "image-classification",
                                                                        "audio-classification"]})
    continual: ContinualSection | None = Field(
        None, description="Continue a previous run on new data (replay, EWC), forgetting measured.",
        json_schema_extra={"tasks": ["text-classification", "image-classification", "audio-classification"]})
    self_training: SelfTrainingSection | None = Field(
        None, description="Adapt to an unlabelled target domain by pseudo-label rounds.",
        json_schema_extra={"tasks": ["text-classification", "image-classification", "audio-classification"]})
    ema: EmaSection | None = Field(None, description="Average the weights over training steps (EMA); the average is "
                                   "what the run evaluates and saves.")
    eval_tta: list[Literal["hflip", "vflip"]] = Field(
        default_factory=list, description="Test-time augmentation at evaluation: class probabilities averaged over "
        "the image and these flips of it.", json_schema_extra={"tasks": ["image-classification"]})
    seed: int = Field(42, description="Seed for data splits, head init and training.")
    overwrite_output_dir: bool = Field(False, description="Allow writing into a non-empty training.output_dir.")
    on_nan_loss: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss stops the run (naming the step and last good checkpoint) or skips the step.")

    @field_validator("task")
    @classmethod
    def _task(cls, v):
        from hftl.tasks import task_names

        names = task_names()
        if v not in names:
            raise ValueError(f"unknown task {v!r}; allowed: {', '.join(names)}.{did_you_mean(v, names)}")
        return v

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """Safe loading with YAML 1.2 core-schema scalars: PyYAML (YAML 1.1) reads `3e-4` as a string and
    `no`/`yes`/`on`/`off` as booleans (so `eval_strategy: no` became False); here only true/false are booleans."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=3e-4` -> (['training', 'learning_rate'], 0.0003): values are typed like YAML."""
    if "=" not in text:
        raise RecipeError(f"Override '{text}' is not of the form dotted.key=value (e.g. training.learning_rate=3e-4).")
    key, _, raw = text.partition("=")
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"Override '{text}' has an empty key; use dotted.key=value.")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = dict(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            child = dict(child) if isinstance(child, dict) else {}
            node[k] = child
            node = child
        node[keys[-1]] = value
    return data


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _UniqueKeyLoader(_Loader):
    """Safe loading that refuses a key given twice in one mapping (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)):
                if key in seen:
                    raise _DuplicateKey(problem=f"the key {key!r} appears twice in one mapping", problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        hint = " It is a directory." if path.is_dir() else ""
        raise RecipeError(f"Recipe file '{path}' does not exist or is not a file.{hint}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader
    except yaml.constructor.ConstructorError as e:
        raise RecipeError(
            f"Recipe '{path}' uses a YAML tag that safe loading refuses ({e.problem}). "
            "Recipes are plain YAML: mappings, lists, strings, numbers and booleans only."
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"Recipe '{path}' is not valid YAML: {e}".replace("\n", " ")) from None
    except OSError as e:
        raise RecipeError(f"Recipe file '{path}' cannot be read: {e.strerror}.") from None
    if data is None:
        raise RecipeError(f"Recipe '{path}' is empty: a recipe needs at least task, model and data.")
    if not isinstance(data, dict):
        raise RecipeError(
            f"Recipe '{path}' must be a YAML mapping with keys task, model, data, ... (got {type(data).__name__})."
        )
    return data


def _training_fields() -> dict[str, dataclasses.Field]:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


def _bool_words(training: dict) -> dict:
    """`fp16: yes` -> True for the TrainingArguments fields that take only a boolean; `eval_strategy: no` stays 'no'."""
    out = {}
    for key, value in training.items():
        allowed = _allowed_types(key)
        if isinstance(value, str) and value in _YAML11_BOOLS and bool in allowed and str not in allowed:
            value = _YAML11_BOOLS[value]
        out[key] = value
    return out


def _default_training(data: dict, name: str) -> dict:
    """hftl's defaults for a transfer run; anything the recipe sets wins."""
    import torch

    training = _bool_words(data)
    training.setdefault("output_dir", str(Path("outputs") / name))
    training.setdefault("eval_strategy", "epoch")
    training.setdefault("save_strategy", training["eval_strategy"] if training["eval_strategy"] in ("steps", "epoch") else "epoch")
    training.setdefault("logging_strategy", "steps")
    training.setdefault("logging_steps", 10)
    training.setdefault("save_total_limit", 2)
    training.setdefault("report_to", "none")
    # Image transforms run in set_transform and need the raw columns.
    training.setdefault("remove_unused_columns", False)
    # Classification losses are per-example means: averaging "tokens" across ranks would multiply the
    # loss (and gradients) by world_size under DDP (transformers 5.x default).
    training.setdefault("average_tokens_across_devices", False)
    # On a CPU-only machine the Trainer joins a multi-process (gloo) group only with use_cpu=True.
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if not has_accelerator:
        training.setdefault("use_cpu", True)
    return training


def _check_training(training: dict, problems: list[str]) -> None:
    fields = _training_fields()
    for key in training:
        if key not in fields and key != "overwrite_output_dir":  # that one gets its own message below
            problems.append(unknown_key(key, "training", fields) + " (training: takes transformers.TrainingArguments names.)")
    if "overwrite_output_dir" in training and "overwrite_output_dir" not in fields:
        problems.append("training.overwrite_output_dir does not exist in transformers 5.x: use the top-level key overwrite_output_dir: true.")


def _format_validation_error(err: ValidationError, model_cls: type[BaseModel]) -> list[str]:
    problems = []
    errors = err.errors()
    for e in errors:
        # pydantic puts the union branch names into loc ('str', "literal['a']", 'function-after[...]', 'FreezeSpec');
        # keep the recipe path only.
        e["where"] = [str(x) for x in e["loc"] if not (isinstance(x, str) and (
            x in ("str", "int", "float", "bool", "none") or x.startswith(_BRANCHES) or x[:1].isupper()))]
    for e in errors:
        loc = e["where"]
        where = ".".join(loc) or "(top level)"
        if _other_branch(e, errors):
            continue
        if e["type"] == "extra_forbidden":
            parent = _section_fields(model_cls, loc[:-1])
            problems.append(unknown_key(loc[-1], ".".join(loc[:-1]), parent))
        elif e["type"] == "missing":
            problems.append(f"Recipe key '{where}' is required but missing.")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"Recipe key '{where}': {msg}{shown}.")
    # Unions report each branch; keep each message once.
    return list(dict.fromkeys(problems))


_BRANCHES = ("function-", "literal[", "list[", "dict[", "tuple[", "union[", "nullable[")


def _other_branch(e: dict, errors: list[dict]) -> bool:
    """A union error from the branch that does not fit the input's kind (a word for a mapping or vice versa)."""
    siblings = [x for x in errors if x["where"][: len(e["where"])] == e["where"] and x is not e]
    if not siblings:
        return False
    if isinstance(e.get("input"), dict):
        return e["type"] == "literal_error"
    return e["type"] in ("model_type", "dict_type", "model_attributes_type")


def _section_fields(model_cls: type[BaseModel], path: list[str]) -> list[str]:
    cls = model_cls
    for part in path:
        field = cls.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        cls = inner[0]
    return [f.alias or name for name, f in cls.model_fields.items()]


def load_recipe(source: str | os.PathLike | dict | Recipe, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe. Raises `RecipeError` listing every problem found."""
    if isinstance(source, Recipe):
        source = source.to_dict()
    if isinstance(source, dict):
        data, name = dict(source), "run"
    else:
        path = Path(source)
        data, name = _read_yaml(path), path.stem
    data = apply_overrides(data, overrides)

    problems: list[str] = []
    top = set(Recipe.model_fields)
    for key in data:
        if key not in top:
            problems.append(unknown_key(key, "", top))
    training = data.get("training") or {}
    if not isinstance(training, dict):
        problems.append(f"Recipe key 'training' must be a mapping of TrainingArguments names (got {training!r}).")
        training = {}
    _check_training(training, problems)
    data = {k: v for k, v in data.items() if k in top}
    data["training"] = _default_training(training, name)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems += _format_validation_error(err, Recipe)
        recipe = None
    if recipe is not None and not problems:
        problems += _cross_checks(recipe)
    if problems:
        where = "" if isinstance(source, dict) else f" '{source}'"
        raise RecipeError(f"Invalid recipe{where}: " + " ".join(problems))
    return recipe


def _cross_checks(recipe: Recipe) -> list[str]:
    """Checks that need several sections or other libraries (PEFT config classes, TrainingArguments)."""
    problems = _task_keys(recipe)
    if recipe.peft is not None:
        from hftl.peft_config import check_peft_section
        from hftl.tasks import get_task

        problems += check_peft_section(recipe.peft, get_task(recipe.task))
        if recipe.hub.push and recipe.hub.upload in ("merged", "both") and not recipe.peft.merge:
            problems.append(f"Recipe key 'hub.upload' is '{recipe.hub.upload}' but peft.merge is false: the merged "
                            "model is only written with peft.merge: true.")
    problems += _check_sharding(recipe)
    problems += _check_regularization(recipe)
    problems += _check_auto(recipe)
    if not problems:
        problems += _check_training_values(recipe.training)
    return problems


def _task_keys(recipe: Recipe) -> list[str]:
    """A key that only some task families read (its schema field says which) is refused for the others,
    instead of being silently ignored."""
    problems = []
    for key, field in Recipe.model_fields.items():
        tasks = (field.json_schema_extra or {}).get("tasks")
        if tasks and recipe.task not in tasks and getattr(recipe, key) not in (None, []):
            problems.append(f"Recipe key '{key}' is read by task {' and '.join(tasks)} only; this recipe's task is "
                            f"{recipe.task}: remove the key or change the task.")
    for section_name in ("model", "data", "regularization"):
        section = getattr(recipe, section_name)
        for key in sorted(section.model_fields_set):
            field = type(section).model_fields[key]
            tasks = (field.json_schema_extra or {}).get("tasks")
            default = field.get_default(call_default_factory=True)
            if tasks and recipe.task not in tasks and getattr(section, key) != default:  # saved recipes list defaults
                problems.append(f"Recipe key '{section_name}.{key}' is read by task {' and '.join(tasks)} only; this "
                                f"recipe's task is {recipe.task}: remove the key or change the task.")
    return problems


def _check_auto(recipe: Recipe) -> list[str]:
    if recipe.strategy.preset != "auto":
        return []
    if recipe.task not in AUTO_TASKS:
        return [f"Recipe key 'strategy.preset' is auto, which chooses among classification strategies from a linear "
                f"probe of the frozen features; task {recipe.task} is not one ({', '.join(AUTO_TASKS)}): give the strategy "
                "explicitly (preset: feature_extraction | partial | full, or freeze / peft)."]
    if recipe.peft is not None:
        return ["Recipe key 'strategy.preset' is auto but a peft: section is given: the adapter already decides what "
                "trains. Remove peft: to let auto choose, or drop preset: auto."]
    return []


def _check_regularization(recipe: Recipe) -> list[str]:
    problems = []
    if recipe.distill is not None and recipe.distill.unlabeled and recipe.regularization.mixing:
        problems.append("Recipe key 'distill.unlabeled' adds rows without labels, which mixup / cutmix cannot mix "
                        "(they mix one-hot labels): drop regularization.mixup / cutmix or distill.unlabeled.")
    if recipe.distill is not None and recipe.distill.unlabeled and recipe.distill.alpha == 0:
        problems.append("Recipe key 'distill.unlabeled' teaches through the distillation term alone, which "
                        "distill.alpha: 0 switches off: raise alpha, or drop unlabeled.")
    if recipe.distill is not None and recipe.distill.cache_teacher is True:
        from hftl.tasks import get_task

        if get_task(recipe.task).augmenting(recipe.data) or recipe.regularization.mixing:
            problems.append("Recipe key 'distill.cache_teacher' is true but the training inputs change every epoch "
                            "(data.augment or mixup / cutmix): cached teacher logits would be for other inputs. Set it "
                            "to auto or false, or turn the augmentation off.")
    smoothing = recipe.training.get("label_smoothing_factor")
    if recipe.regularization.label_smoothing and smoothing not in (None, 0, 0.0):
        problems.append(f"Recipe keys 'regularization.label_smoothing' ({recipe.regularization.label_smoothing}) and "
                        f"'training.label_smoothing_factor' ({smoothing}) say the same thing: give one of them.")
    if recipe.ema is not None and (recipe.training.get("fsdp") or _zero_stage(recipe.training) == 3):
        problems.append("Recipe key 'ema' needs every weight on every rank; FSDP and ZeRO-3 shard them: use DDP "
                        "(or ZeRO-1/2), or remove ema.")
    return problems


def _zero_stage(training: dict) -> int | None:
    """ZeRO stage from training.deepspeed (dict or json path) or from `accelerate launch` with a DeepSpeed config."""
    import json

    ds = training.get("deepspeed")
    if isinstance(ds, str) and Path(ds).is_file():
        try:
            ds = json.loads(Path(ds).read_text())
        except ValueError:
            ds = None
    if isinstance(ds, dict):
        stage = (ds.get("zero_optimization") or {}).get("stage")
        return int(stage) if stage is not None else None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return int(stage) if stage and stage.isdigit() else None
    return None


def _check_sharding(recipe: Recipe) -> list[str]:
    """Combinations that cannot train correctly under parameter sharding are refused up front."""
    s = recipe.strategy
    problems = []
    if _zero_stage(recipe.training) == 3 and s.gradual_unfreezing is not None:
        problems.append(
            "strategy.gradual_unfreezing cannot run under DeepSpeed ZeRO-3: parameters are sharded and their "
            "requires_grad is fixed when the engine is built, so layers unfrozen later would silently not train. "
            "Use ZeRO-2, DDP or FSDP (accelerate_configs/), or drop gradual_unfreezing.")
    fsdp = recipe.training.get("fsdp") or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    orig = (recipe.training.get("fsdp_config") or {}).get("use_orig_params",
                                                          os.environ.get("FSDP_USE_ORIG_PARAMS", "true"))
    freezes = s.freeze not in (None, "none") or s.preset in ("partial", "feature_extraction") or s.gradual_unfreezing
    if fsdp and str(orig).lower() == "false" and (freezes or recipe.peft is not None):
        problems.append(
            "FSDP with use_orig_params: false cannot mix frozen and trainable parameters in one unit; set "
            "use_orig_params: true (accelerate_configs/fsdp.yaml does).")
    return problems


@contextmanager
def _accelerate_state_kept():
    """TrainingArguments() resets Accelerate's shared state (transformers' training_args.py). A recipe validated
    while a Trainer lives (hftl reads a finished run's recipe.yaml back for its evaluation report) would leave that
    Trainer unable to evaluate or predict: keep the state as it was."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState)]
    try:
        yield
    finally:
        for cls, state in saved:
            cls._shared_state.clear()
            cls._shared_state.update(state)


def _check_training_values(training: dict) -> list[str]:
    """Let TrainingArguments itself judge the values (types, choices, combinations)."""
    from transformers import TrainingArguments

    fields = _training_fields()
    problems = []
    for key, value in training.items():
        field = fields.get(key)
        if field is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in _NON_NEGATIVE and value < 0:
            problems.append(f"Recipe key 'training.{key}' must be >= 0 (got {value!r}).")
        if key in _POSITIVE and isinstance(value, (int, float)) and value <= 0:
            problems.append(f"Recipe key 'training.{key}' must be > 0 (got {value!r}).")
        wrong_type = _type_problem(key, value)
        if wrong_type:
            problems.append(wrong_type)
    if problems:
        return problems
    try:
        with _accelerate_state_kept():
            args = TrainingArguments(**training)
        problems += _check_report_to(args.report_to)
    except ImportError as e:  # e.g. training.deepspeed without the deepspeed package
        problems.append(f"Recipe section 'training' needs a package that is not installed: {e}")
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e).strip().replace("\n", " ")
        # Name the key: TrainingArguments' messages quote the bad value or the key, rarely both.
        named = [k for k, v in training.items()
                 if re.search(rf"\b{re.escape(k)}\b", msg) or (isinstance(v, str) and f"{v} is not a valid" in msg)]
        keys = ", ".join(f"'training.{k}'" for k in named)
        where = f"Recipe key{'s' if len(named) > 1 else ''} {keys}" if named else "Recipe section 'training'"
        problems.append(f"{where} {'are' if len(named) > 1 else 'is'} rejected by TrainingArguments: {msg}")
    return problems


def _check_report_to(report_to: list[str] | None) -> list[str]:
    """An integration that is not installed would only fail when the Trainer is built, after the model loaded."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    available = get_available_reporting_integrations()
    problems = []
    for name in report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(f"Recipe key 'training.report_to': unknown integration {name!r}.{did_you_mean(name, INTEGRATION_TO_CALLBACK)} "
                            f"Known: none, all, {', '.join(INTEGRATION_TO_CALLBACK)}.")
        elif name not in available:
            problems.append(f"Recipe key 'training.report_to': {name!r} is not installed (installed: "
                            f"{', '.join(available) or 'none of them'}); install it or set report_to: none.")
    return problems


@functools.cache
def _training_hints() -> dict:
    import typing

    from transformers import TrainingArguments

    try:
        return typing.get_type_hints(TrainingArguments)
    except Exception:  # an annotation that does not resolve in this transformers version: skip type checks
        return {}


def _allowed_types(key: str) -> tuple:
    """The types TrainingArguments' annotation of `key` admits (X | None -> (X, NoneType)); (None,) if unknown."""
    import typing

    hint = _training_hints().get(key)
    return typing.get_args(hint) or (hint,)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_problem(key: str, value) -> str | None:
    """TrainingArguments does not check types: a string for num_train_epochs would only fail mid-training."""
    allowed = _allowed_types(key)
    if not allowed or not all(t in _TYPE_NAMES for t in allowed):
        return None  # enums, lists, dicts: TrainingArguments checks those itself
    # A string field takes any scalar (resume_from_checkpoint: true is hftl's "the last checkpoint").
    ok = (isinstance(value, bool) and bool in allowed) or (str in allowed and isinstance(value, (str, int, float))) or (
        not isinstance(value, bool) and (type(value) in allowed or (type(value) is int and float in allowed)))
    if ok:
        return None
    names = " or ".join(_TYPE_NAMES[t] for t in allowed)
    return f"Recipe key 'training.{key}' must be {names} (got {value!r})."


_POSITIVE = {"learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs",
             "gradient_accumulation_steps", "logging_steps", "eval_steps", "save_steps"}
_NON_NEGATIVE = {"weight_decay", "warmup_steps", "warmup_ratio", "max_grad_norm", "save_total_limit",
                 "dataloader_num_workers", "label_smoothing_factor"}
