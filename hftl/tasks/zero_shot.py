"""Zero-shot image classification with image-text dual encoders: CLIP, SigLIP (transformers' zero-shot Auto class)
and VisionTextDualEncoderModel (any vision and text checkpoints with projections, as run_clip.py builds them).

The class names become text: `data.prompt_template` ("a photo of a {}.") or several `prompt_templates`, whose text
embeddings are averaged per class (CLIP's prompt ensembling). An image's class scores are its similarities to the
classes' text embeddings, scaled as the model scales them (logit_scale, and SigLIP's logit_bias): with one template
exactly the logits of transformers' zero-shot-image-classification pipeline. Training is contrastive, as the model
was pretrained (FLYP, Goyal et al. 2023): each image against the prompt of its own class, or its own caption
(`data.caption_column`), with the model's own loss; `strategy.freeze` on the image tower is LiT (Zhai et al. 2022).
Both towers get a layer map of their own (hooks/towers.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForZeroShotImageClassification, AutoProcessor, Trainer

from hftl.errors import HftlError, did_you_mean
from hftl.hooks import unwrap
from hftl.tasks.base import register_task
from hftl.tasks.image_classification import (
    ImageClassification,
    describe_image_preprocessing,
    image_datasets,
    portable_image_processor,
)

DUAL_ENCODER = "vision-text-dual-encoder"
TOWERS = ["vision_model", "text_model"]


class DualEncoderModel:
    """What `from_pretrained` gives for a dual-encoder checkpoint: transformers' zero-shot Auto class (CLIP, SigLIP,
    ...), or VisionTextDualEncoderModel, which that Auto class does not map."""

    @staticmethod
    def from_pretrained(path, config=None, **kwargs):
        from transformers import VisionTextDualEncoderModel

        config = config or AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items()
                                                               if k in ("revision", "trust_remote_code", "cache_dir")})
        check_dual_encoder(path, config)
        if config.model_type == DUAL_ENCODER:
            return VisionTextDualEncoderModel.from_pretrained(path, config=config, **kwargs)
        return AutoModelForZeroShotImageClassification.from_pretrained(path, config=config, **kwargs)


def check_dual_encoder(path: str, config) -> None:
    names = AutoModelForZeroShotImageClassification._model_mapping._model_mapping
    if config.model_type != DUAL_ENCODER and config.model_type not in names:
        raise HftlError(
            f"Recipe key 'model.model_name_or_path': '{path}' is a {config.model_type} model, with no text tower to "
            "read class names with; task zero-shot-image-classification takes an image-text dual encoder: "
            f"{', '.join(sorted(names))} or vision-text-dual-encoder (VisionTextDualEncoderModel).")


def text_options(model_type: str) -> dict:
    """How class prompts are tokenized: as the zero-shot pipeline does (SigLIP pools its last position, so its
    texts are padded to the 64 tokens it was trained with)."""
    if "siglip" in model_type:
        return {"padding": "max_length", "max_length": 64, "truncation": True}
    return {"padding": True, "truncation": True}


class PromptCollator:
    """Batches images with (a) each image's own text -- its class prompt (the first template), or its caption --
    for contrastive training, and (b) every class's prompts (classes x templates, tokenized once) for scoring."""

    def __init__(self, tokenizer, label_names: list[str], templates: list[str], caption: str | None = None,
                 options: dict | None = None):
        self.tokenizer, self.caption, self.options = tokenizer, caption, options or {}
        self.templates = list(templates)
        self.classes = self._tokens([t.format(name) for name in label_names for t in self.templates])
        self.label_names = list(label_names)

    def _tokens(self, texts: list[str]) -> dict:
        out = self.tokenizer(texts, return_tensors="pt", **self.options)
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask")}

    def __call__(self, features: list[dict]) -> dict:
        batch = {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])}
        if "labels" in features[0]:
            labels = torch.tensor([int(f["labels"]) for f in features])
            batch["labels"] = labels
            if self.caption:
                own = self._tokens([f[self.caption] for f in features])
            else:  # the first template's prompt of each image's class
                rows = labels * len(self.templates)
                own = {k: v[rows] for k, v in self.classes.items()}
            batch.update(own)
        batch.update({f"class_{k}": v for k, v in self.classes.items()})
        batch["n_templates"] = len(self.templates)
        return batch


def class_logits(model, inputs: dict) -> torch.Tensor:
    """(images, classes) scores: each image's similarity to each class's mean prompt embedding, scaled (and shifted)
    as the model scales its logits_per_image."""
    out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["class_input_ids"],
                attention_mask=inputs.get("class_attention_mask"))
    n = int(inputs["n_templates"])
    if n == 1:
        return out.logits_per_image
    text = out.text_embeds.reshape(-1, n, out.text_embeds.shape[-1]).mean(1)
    text = text / text.norm(dim=-1, keepdim=True)
    inner = unwrap(model)
    logits = out.image_embeds @ text.t() * inner.logit_scale.exp()
    bias = getattr(inner, "logit_bias", None)
    return logits + bias if bias is not None else logits


def contrastive(model, inputs: dict):
    """The model's own contrastive loss (CLIP's, SigLIP's) on each image and its own text, and its outputs."""
    return model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                 attention_mask=inputs.get("attention_mask"), return_loss=True)


class DualEncoderTrainer(Trainer):
    """In training, the model's own contrastive loss on each image and its text; in evaluation, cross-entropy over
    the class scores (`class_logits`), which are also what is predicted."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            out = contrastive(model, inputs)
            loss, outputs = out.loss, {"logits": out.logits_per_image}
        else:
            logits = class_logits(model, inputs)
            labels = inputs.get("labels")
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            outputs = {"logits": logits}
        return (loss, outputs) if return_outputs else loss


@register_task
class ZeroShotImageClassification(ImageClassification):
    name = "zero-shot-image-classification"
    auto_model = DualEncoderModel
    processor_arg = ("processor", "AutoProcessor")
    open_labels = True
    exports = ("merge", "wise-ft")

    def load_processor(self, model_section, path: str, data):
        check_dual_encoder(path, AutoConfig.from_pretrained(model_section.config_name or path,
                                                            revision=model_section.model_revision,
                                                            trust_remote_code=model_section.trust_remote_code,
                                                            cache_dir=model_section.cache_dir))
        processor = AutoProcessor.from_pretrained(
            model_section.image_processor_name or path, revision=model_section.model_revision,
            trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
            raise HftlError(f"Recipe key 'model.model_name_or_path': '{path}' has no processor with both an image "
                            f"processor and a tokenizer ({type(processor).__name__}); save one with the checkpoint "
                            "(e.g. CLIPProcessor, VisionTextDualEncoderProcessor).")
        return processor

    def configure_model(self, model, model_section) -> None:
        model.hftl_towers = [t for t in TOWERS if hasattr(model, t)]

    def portable_processor(self, processor, data, model):
        processor.image_processor = portable_image_processor(processor.image_processor, data, model)
        return processor

    def trainer_classes(self):
        from transformers import TrainingArguments

        return DualEncoderTrainer, TrainingArguments

    def training_defaults(self, data, generation) -> dict:
        return {"label_names": ["labels"]}  # the forward takes no labels: name them, so evaluation gathers them

    def prepare(self, splits, processor, data, model=None):
        caption = data.caption_column
        if caption and caption not in splits.train.column_names:
            raise HftlError(f"Recipe key 'data.caption_column': column '{caption}' not in the data; columns are: "
                            f"{', '.join(splits.train.column_names)}.{did_you_mean(caption, splits.train.column_names)}")
        vision = getattr(model, "vision_model", None)  # data.image_size is checked on the image tower alone
        train, validation = image_datasets(splits, processor.image_processor, data, vision,
                                           keep=(caption,) if caption else ())
        _check_names(splits.label_names, processor.tokenizer, data.templates)
        return train, validation, self._collator(processor, data, splits.label_names, model, caption)

    def _collator(self, processor, data, label_names, model=None, caption=None):
        model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
        if not model_type:
            model_type = type(processor).__name__.lower()
        return PromptCollator(processor.tokenizer, label_names, data.templates, caption, text_options(model_type))

    def prediction_collator(self, processor, data, label_names):
        return self._collator(processor, data, label_names)

    def prepare_inputs(self, dataset, processor, data):
        return super().prepare_inputs(dataset, processor.image_processor, data)

    def training_loss(self, model, inputs):
        return contrastive(model, inputs).loss

    def logits(self, model, inputs):
        return class_logits(model, inputs)

    def usage(self, data, adapter=False, label_names=()):
        if adapter or len(data.templates) > 1:
            return None  # the pipeline takes one template; hftl.predict averages them
        labels = ", ".join(repr(n) for n in label_names)
        return ["from transformers import pipeline", "",
                'classifier = pipeline("zero-shot-image-classification", model=model_id)',
                f"print(classifier({self.example_input}, candidate_labels=[{labels}], "
                f"hypothesis_template={data.templates[0]!r}))"]

    def describe_preprocessing(self, processor, data) -> str:
        templates = "; ".join(repr(t) for t in data.templates)
        return (f"{describe_image_preprocessing(processor.image_processor, data)}; class prompts: {templates}"
                f"{f'; trained on the captions of {data.caption_column!r}' if data.caption_column else ''}")


def _check_names(label_names: list[str], tokenizer, templates: list[str]) -> None:
    """A class whose name tokenizes to nothing cannot be told apart by its text."""
    empty = [n for n in label_names if not tokenizer(n, add_special_tokens=False)["input_ids"]]
    if empty:
        raise HftlError(f"Recipe key 'data.label_column_name': the class name(s) {empty} tokenize to nothing, so their "
                        f"prompts ({templates[0].format(empty[0])!r}) cannot tell them apart; rename them with words.")
