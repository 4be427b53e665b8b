"""The whole recipe: its sections, `hub:` and the top-level keys. Names follow the transformers example scripts
(ModelArguments / DataTrainingArguments); `training:` is passed to `transformers.TrainingArguments` as is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hftl.errors import did_you_mean
from hftl.recipe import yaml_io
from hftl.recipe.base import Section
from hftl.recipe.blocks import (
    ContinualSection,
    ContrastiveSection,
    DistillSection,
    EmaSection,
    GenerationSection,
    RegularizationSection,
    SelfTrainingSection,
    SpeedSection,
)
from hftl.recipe.data import DataSection
from hftl.recipe.model import ModelSection
from hftl.recipe.peft import PeftSection
from hftl.recipe.strategy import StrategySection
from hftl.tasks import task_names


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
    space: bool = Field(False, description="Also push a Gradio Space that serves the pushed model (hftl serve's page "
                                           "and /predict API), after the model.")
    space_id: str | None = Field(None, description="user/name of the Space (default: hub.repo_id; a Space and a model "
                                                   "may share a name).")

    @field_validator("space_id")
    @classmethod
    def _space_id(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", v):
            raise ValueError("must be the Space's Hub id, 'user/name' (letters, digits, '-', '_', '.'); leave it out "
                             "to use hub.repo_id")
        return v

    @model_validator(mode="after")
    def _repo(self):
        if self.push and not self.repo_id:
            raise ValueError("hub.push is true but hub.repo_id is missing (e.g. repo_id: you/my-model)")
        if self.space_id and not self.space:
            raise ValueError("hub.space_id names a Space but hub.space is false: set hub.space: true to push it")
        return self


class Recipe(Section):
    task: str = Field(description="The task family: image-classification, text-classification, ... (hftl.tasks.task_names()).")
    model: ModelSection
    data: DataSection
    strategy: StrategySection = Field(default_factory=StrategySection)
    peft: PeftSection | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="transformers.TrainingArguments, verbatim.")
    hub: HubSection = Field(default_factory=HubSection)
    generation: GenerationSection | None = Field(None, description="Generative tasks: prompts sampled after training, "
                                                 "decoding settings.", json_schema_extra={"tasks": ["causal-lm", "seq2seq", "image-text-to-text"]})
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
    contrastive: ContrastiveSection | None = Field(
        None, description="Tune the encoder on label pairs before the head (SetFit's first stage): few-shot data.",
        json_schema_extra={"tasks": ["text-classification", "image-classification", "audio-classification"]})
    ema: EmaSection | None = Field(None, description="Average the weights over training steps (EMA); the average is "
                                   "what the run evaluates and saves.")
    eval_tta: list[Literal["hflip", "vflip"]] = Field(
        default_factory=list, description="Test-time augmentation at evaluation: class probabilities averaged over "
        "the image and these flips of it.", json_schema_extra={"tasks": ["image-classification"]})
    speed: SpeedSection = Field(default_factory=SpeedSection, description="hftl's speed levers (the Trainer's are "
                                "training: keys); each one the run uses is named in its plan and card.")
    seed: int = Field(42, description="Seed for data splits, head init and training.")
    overwrite_output_dir: bool = Field(False, description="Allow writing into a non-empty training.output_dir.")
    on_nan_loss: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss stops the run (naming the step and last good checkpoint) or skips the step.")

    @field_validator("task")
    @classmethod
    def _task(cls, v):
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
        return yaml_io.dump(self.to_dict())
