"""The optional training blocks' sections: regularization (label smoothing, mixup / cutmix), ema, distill,
self_training, continual, contrastive, generation (the generative tasks' sampling and decoding) and speed."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from hftl.recipe.base import NonNegativeInt, PositiveInt, Section


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


class ContrastiveSection(Section):
    """Contrastive body tuning before the classifier trains (SetFit's first stage): pairs drawn from the labels
    (same label: similar, different: dissimilar) pull the encoder's embeddings -- what the head reads -- into
    class clusters. It tunes the backbone parameters the strategy (or PEFT) trains; then the head trains as the
    strategy says (strategy.head_fit: lbfgs, SetFit's converged head, or the Trainer's epochs end to end)."""

    loss: Literal["cosine", "contrastive", "batch_hard_triplet"] = Field(
        "cosine", description="sentence-transformers' loss: CosineSimilarityLoss (SetFit's default: cos(u, v) "
        "regressed to 1 / 0), ContrastiveLoss (margin on the distance), or BatchHardTripletLoss (batches of "
        "examples, the hardest positive and negative per anchor).")
    num_iterations: PositiveInt = Field(20, description="Pairs per training example: one positive and one negative "
                                        "partner per iteration, so 2 x num_iterations x examples pairs (SetFit's "
                                        "num_iterations); batch_hard_triplet sees each example num_iterations times.")
    max_pairs: PositiveInt | None = Field(None, description="At most this many pairs (a seeded sample, balanced).")
    epochs: PositiveInt = Field(1, description="Passes over the pairs.")
    batch_size: PositiveInt = Field(16, description="Pairs (or examples, for batch_hard_triplet) per step.")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW's rate for the body (SetFit's body_learning_rate), "
                                 "linear decay after 10% warmup.")
    margin: float = Field(0.5, gt=0, description="Margin of the contrastive and triplet losses.")


class GenerationSection(Section):
    """Sampled completions after training (causal LM) and the decoding of generation-based evaluation (seq2seq)."""

    prompts: list[str] = Field(default_factory=list, description="Fixed prompts whose completions go into "
                               "samples.jsonl and the model card (base model and trained model side by side).")
    images: list[str] | None = Field(None, description="Image-text-to-text: one image file per prompt, shown with it "
                                     "(the prompt's user turn is the image, then the text).",
                                     json_schema_extra={"tasks": ["image-text-to-text"]})
    max_new_tokens: PositiveInt = Field(48, description="Tokens generated per prompt.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    num_beams: PositiveInt = Field(1, description="Beam search width (seq2seq evaluation; greedy or sampled if 1).")
    seed: int = Field(0, description="Seed of the sampling, so the samples are reproducible.")


class SpeedSection(Section):
    """hftl's own speed levers (training/speed.py); the Trainer's (bf16, optim, torch_compile, dataloader workers,
    train_sampling_strategy) stay in `training:`."""

    micro_batch: Literal["auto"] | PositiveInt | None = Field(
        "auto", description="Split each training batch of token sequences into micro-batches of this many examples, "
        "sorted by length, each padded to its own longest, their gradients summed: the same update with less padding. "
        "auto: on CPUs (compute grows with the tokens) 16 where a batch holds two, else 8; off on GPUs and for "
        "models with BatchNorm; null: off.")
    pad_to_multiple_of: Literal["auto"] | PositiveInt | None = Field(
        "auto", description="Pad each batch's token sequences to a multiple of this (tensor cores want aligned "
        "shapes); auto: 8 on a CUDA GPU, no rounding on CPUs, where it only adds padding; null: off.")
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="Train with channels_last tensors (the fast path for convolutions on CPUs and GPUs); "
        "auto: for convolutional networks (3 or more Conv2d), not for transformers.")
