"""Checkpoints assembled from other checkpoints, built once into the zoo's cache: a VisionTextDualEncoderModel from
a vision and a text checkpoint with new projections (transformers' run_clip.py builds it the same way), saved with
its processor so that everything downstream loads it like any checkpoint folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hftl.zoo.sources import cached_conversion

SEED = 0  # the new projections' initialisation: the same folder for the same inputs


def _identity(path: str) -> str:
    config = Path(path) / "config.json"
    return path + (config.read_text() if config.is_file() else "")


def dual_encoder(vision: str, text: str, projection_dim: int) -> str:
    """The folder of a dual encoder of `vision` + `text` (local folders or Hub ids), its projections initialised
    from SEED. A timm vision tower gets its width as the config's hidden_size and a CLIP image processor that
    computes what timm's own data config does (the VisionTextDualEncoderProcessor saves and reloads that one)."""
    digest = hashlib.sha256(json.dumps([_identity(vision), _identity(text), projection_dim, SEED]).encode()).hexdigest()

    def build(tmp: Path):
        import torch
        import transformers as tf

        vision_config, text_config = tf.AutoConfig.from_pretrained(vision), tf.AutoConfig.from_pretrained(text)
        image_processor = tf.AutoImageProcessor.from_pretrained(vision)
        if vision_config.model_type == "timm_wrapper":
            vision_config.hidden_size = vision_config.num_features
            image_processor = _clip_processor(image_processor.data_config)
        config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(vision_config, text_config,
                                                                         projection_dim=projection_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = tf.VisionTextDualEncoderModel(
                config, vision_model=tf.AutoModel.from_pretrained(vision, config=vision_config),
                text_model=tf.AutoModel.from_pretrained(text, config=text_config))
        model.save_pretrained(tmp)
        tf.VisionTextDualEncoderProcessor(image_processor=image_processor,
                                          tokenizer=tf.AutoTokenizer.from_pretrained(text)).save_pretrained(tmp)

    return cached_conversion(f"dual-{digest[:16]}", build)


def _clip_processor(data_config: dict):
    """timm's evaluation transform (resize the short side to size / crop_pct, center crop, normalise) as a
    CLIPImageProcessor."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    _, h, w = data_config["input_size"]
    short = int(min(h, w) / data_config.get("crop_pct", 1.0))
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}.get(data_config.get("interpolation"), Image.BICUBIC)
    return CLIPImageProcessor(size={"shortest_edge": short}, crop_size={"height": h, "width": w}, resample=resample,
                              image_mean=list(data_config["mean"]), image_std=list(data_config["std"]))
