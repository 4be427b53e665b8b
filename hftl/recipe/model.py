"""`model:`: the checkpoint and how to load it (the transformers example scripts' ModelArguments names)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hftl import zoo
from hftl.recipe.base import Section, zoo_alias

ZERO_SHOT = "zero-shot-image-classification"


class ModelSection(Section):
    model_name_or_path: str | None = Field(None, description="Hub id, local folder, `timm/<name>` or `zoo:<alias>`.")
    vision_model_name_or_path: str | None = Field(
        None, description="Zero-shot: instead of model_name_or_path, a VisionTextDualEncoderModel is built from this "
        "vision checkpoint and text_model_name_or_path, with new projections (run_clip.py's route).",
        json_schema_extra={"tasks": [ZERO_SHOT]})
    text_model_name_or_path: str | None = Field(
        None, description="Zero-shot: the text checkpoint of the dual encoder built with vision_model_name_or_path.",
        json_schema_extra={"tasks": [ZERO_SHOT]})
    projection_dim: int = Field(512, gt=0, description="Zero-shot: the size of the new projections of a dual encoder "
                                "built from a vision and a text checkpoint.", json_schema_extra={"tasks": [ZERO_SHOT]})
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
    freeze_vision_tower: bool = Field(True, description="Keep the vision tower frozen for the whole run (its "
                                      "parameters never train).", json_schema_extra={"tasks": ["image-text-to-text"]})
    freeze_multi_modal_projector: bool = Field(
        False, description="Keep the projector between the vision tower and the language model frozen (a pretrained "
        "one; a model assembled with a new projector must train it).", json_schema_extra={"tasks": ["image-text-to-text"]})
    freeze_language_model: bool = Field(
        False, description="Keep the language model frozen (LLaVA's first stage: the projector alone trains).",
        json_schema_extra={"tasks": ["image-text-to-text"]})
    cache_dir: str | None = Field(None, description="Where downloaded checkpoints are cached.")
    extra_special_tokens: list[str] | None = Field(
        None, description="Generative tasks: tokens added to the vocabulary as special tokens; the embeddings grow "
        "and train (with PEFT they are saved with the adapter).", json_schema_extra={"tasks": ["causal-lm", "seq2seq", "image-text-to-text"]})
    pooling: Literal["auto", "default", "mean", "cls"] = Field(
        "auto", description="Sentence pooling for BERT-style text models: auto (the checkpoint's own, from a "
        "sentence-transformers 1_Pooling/config.json), default (the model's pooler), mean or cls.")

    @field_validator("model_name_or_path", "vision_model_name_or_path", "text_model_name_or_path")
    @classmethod
    def _zoo_model(cls, v):
        return zoo_alias(v, zoo.MODELS, "model")

    @model_validator(mode="after")
    def _one_checkpoint(self):
        pair = (self.vision_model_name_or_path, self.text_model_name_or_path)
        if self.model_name_or_path is None and None in pair:
            raise ValueError("give model.model_name_or_path (or, for a dual encoder of two checkpoints, both "
                             "model.vision_model_name_or_path and model.text_model_name_or_path)")
        if self.model_name_or_path is not None and pair != (None, None):
            raise ValueError("give model.model_name_or_path or the vision/text pair, not both")
        return self

    @property
    def source(self) -> str:
        """The checkpoint as the recipe names it (for cards, plots and messages)."""
        return self.model_name_or_path or f"{self.vision_model_name_or_path} + {self.text_model_name_or_path}"

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
