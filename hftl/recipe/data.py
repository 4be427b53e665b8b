"""`data:`: the data sources, columns and preprocessing (DataTrainingArguments names), with image augmentation
and log-mel spectrogram settings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hftl import zoo
from hftl.recipe.base import YAML11_BOOLS, PositiveFloat, PositiveInt, Section, zoo_alias

ZERO_SHOT = "zero-shot-image-classification"

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
                                   json_schema_extra={"tasks": ["image-classification", ZERO_SHOT]})
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
    long_examples: Literal["error", "drop"] = Field(
        "error", description="An example longer than max_seq_length once its images are expanded into image tokens: "
        "refused with its row number (error) or dropped and counted (drop); never cut.",
        json_schema_extra={"tasks": ["image-text-to-text"]})
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

    prompt_template: str = Field(
        "a photo of a {}.", description="Zero-shot: the text for a class, '{}' standing for its name (the label).",
        json_schema_extra={"tasks": [ZERO_SHOT]})
    prompt_templates: list[str] | None = Field(
        None, description="Zero-shot: several templates; a class's text embedding is the mean of its prompts' (CLIP's "
        "prompt ensembling). Instead of prompt_template.", json_schema_extra={"tasks": [ZERO_SHOT]})
    caption_column: str | None = Field(
        None, description="Zero-shot: train on each image's own text in this column (image-text pairs, as run_clip's "
        "caption_column) instead of its class prompt; evaluation scores the class prompts.",
        json_schema_extra={"tasks": [ZERO_SHOT]})

    @field_validator("prompt_template")
    @classmethod
    def _one_slot(cls, v):
        if v.count("{}") != 1:
            raise ValueError("a prompt template holds '{}' once, where the class name goes (e.g. 'a photo of a {}.')")
        return v

    @field_validator("prompt_templates")
    @classmethod
    def _slots(cls, v):
        bad = [t for t in v or [] if t.count("{}") != 1]
        if bad or v == []:
            raise ValueError(f"each template holds '{{}}' once, where the class name goes (not: {bad or 'an empty list'})")
        return v

    @property
    def templates(self) -> list[str]:
        return list(self.prompt_templates or [self.prompt_template])

    @field_validator("dataset_name")
    @classmethod
    def _zoo_dataset(cls, v):
        return zoo_alias(v, zoo.DATASETS, "dataset")

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
        v = YAML11_BOOLS.get(v, v) if isinstance(v, str) else v
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
