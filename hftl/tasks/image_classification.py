"""Image classification: any AutoModelForImageClassification checkpoint or timm model (via TimmWrapper).

Preprocessing comes from the checkpoint's own image processor / timm data config (size, mean, std,
interpolation, crop): never hard-coded. Train-time augmentation from `data.augment`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2 as T
from transformers import AutoImageProcessor, AutoModelForImageClassification, default_data_collator

from hftl.errors import HftlError, did_you_mean
from hftl.tasks.base import register_task
from hftl.tasks.labels import ClassificationTask

# PIL resample codes -> torchvision interpolation
_PIL_TO_TV = {0: T.InterpolationMode.NEAREST, 1: T.InterpolationMode.LANCZOS, 2: T.InterpolationMode.BILINEAR,
              3: T.InterpolationMode.BICUBIC, 4: T.InterpolationMode.BOX, 5: T.InterpolationMode.HAMMING}


@dataclass(frozen=True)
class Preprocessing:
    size: tuple[int, int]
    resize: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: T.InterpolationMode


def _interp(value) -> T.InterpolationMode:
    if isinstance(value, T.InterpolationMode):
        return value
    if isinstance(value, str):
        return T.InterpolationMode(value.lower())
    return _PIL_TO_TV.get(int(getattr(value, "value", value)), T.InterpolationMode.BILINEAR)


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def portable_image_processor(processor, data, model):
    """The image processor the run evaluates with and saves: the checkpoint's own, or with `data.image_size`
    one that resizes straight to that size (no crop) with the checkpoint's mean, std and interpolation -- so
    `AutoImageProcessor.from_pretrained(run)` preprocesses as the run did. timm models keep it in
    `config.pretrained_cfg`, which their TimmWrapperImageProcessor reads from config.json."""
    if not data.image_size:
        return processor
    h, w = data.image_size
    if getattr(processor, "data_config", None):
        from transformers import TimmWrapperImageProcessor

        # crop_mode "squash": timm resizes to (h, w) exactly, whatever the aspect ratio.
        cfg = dict(model.config.pretrained_cfg, input_size=[3, h, w], crop_pct=1.0, crop_mode="squash")
        model.config.pretrained_cfg = cfg
        return TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture=getattr(model.config, "architecture", None))
    from transformers import ViTImageProcessor

    pre = preprocessing_of(processor)
    return ViTImageProcessor(
        do_resize=True, size={"height": h, "width": w}, resample=_get(processor, "resample") or 2, do_rescale=True,
        rescale_factor=_get(processor, "rescale_factor") or 1 / 255, do_normalize=True, image_mean=list(pre.mean),
        image_std=list(pre.std))


def preprocessing_of(processor) -> Preprocessing:
    """Size, mean, std, interpolation and crop from an image processor (the checkpoint's, or portable_processor's)."""
    cfg = getattr(processor, "data_config", None)
    if cfg:  # timm (TimmWrapperImageProcessor)
        h, w = cfg["input_size"][-2:]
        crop_pct = cfg.get("crop_pct") or 1.0
        resize = (int(h / crop_pct), int(w / crop_pct))
        return Preprocessing((h, w), resize, tuple(cfg["mean"]), tuple(cfg["std"]), _interp(cfg.get("interpolation", "bilinear")))
    size = _get(processor, "crop_size") or _get(processor, "size")
    if _get(size, "height"):
        hw = (int(_get(size, "height")), int(_get(size, "width")))
    elif _get(size, "shortest_edge"):
        hw = (int(_get(size, "shortest_edge")),) * 2
    else:
        raise HftlError(f"Cannot read the input size from {type(processor).__name__} ({size!r}); set model.image_processor_name.")
    crop_pct = _get(processor, "crop_pct")
    if _get(processor, "crop_size"):
        s = _get(processor, "size")
        edge = _get(s, "shortest_edge") or _get(s, "height")
        resize = (int(edge),) * 2 if edge else hw
    elif crop_pct and hw[0] < 384:  # ConvNeXt-style: resize larger, then center-crop
        resize = (int(hw[0] / crop_pct), int(hw[1] / crop_pct))
    else:
        resize = hw
    mean = tuple(_get(processor, "image_mean") or (0.5, 0.5, 0.5))
    std = tuple(_get(processor, "image_std") or (0.5, 0.5, 0.5))
    return Preprocessing(hw, resize, mean, std, _interp(_get(processor, "resample") or 2))


def train_transforms(pre: Preprocessing, augment):
    """Train-time augmentation at the processor's size, in timm's order (evaluation runs the processor itself):
    crop and flip, then colour jitter and the automatic policy (on PIL images), then to a normalised tensor,
    then random erasing."""
    steps = []
    if augment.random_resized_crop:
        steps.append(T.RandomResizedCrop(pre.size, scale=augment.crop_scale, interpolation=pre.interpolation, antialias=True))
    else:
        steps += [T.Resize(pre.resize, interpolation=pre.interpolation, antialias=True), T.CenterCrop(pre.size)]
    if augment.horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    if augment.color_jitter:
        j = augment.color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    if augment.policy:
        steps.append(policy_transform(augment.policy, pre))
    steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    if augment.random_erasing:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(probability=augment.random_erasing, mode="pixel", device="cpu"))
    return T.Compose(steps)


def policy_transform(policy: str, pre: Preprocessing):
    """timm's RandAugment / AugMix / AutoAugment for a policy string (hyper-parameters as timm's
    create_transform sets them: translation 45% of the image side, fill with the mean colour), or torchvision's
    TrivialAugmentWide for `trivial`."""
    from PIL import Image as PILImage

    if policy == "trivial":
        return T.TrivialAugmentWide(interpolation=pre.interpolation)
    from timm.data import auto_augment as aa
    from timm.data.transforms import str_to_pil_interp

    params = {"translate_const": int(min(pre.size) * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in pre.mean)}
    if pre.interpolation.value in ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"):
        params["interpolation"] = str_to_pil_interp(pre.interpolation.value)
    try:
        if policy.startswith("rand"):
            tf = aa.rand_augment_transform(policy, params)
        elif policy.startswith("augmix"):
            tf = aa.augment_and_mix_transform(policy, {**params, "translate_pct": 0.3})
        else:
            tf = aa.auto_augment_transform(policy, params)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise HftlError(f"Recipe key 'data.augment.policy': timm cannot build {policy!r} ({e or type(e).__name__}); "
                        "e.g. rand-m9-mstd0.5, augmix-m5-w3, original, trivial.") from None

    _safe_posterize(tf, aa)

    def on_rgb(image):  # timm's ops take RGB PIL images
        return tf(image if isinstance(image, PILImage.Image) else T.functional.to_pil_image(image))

    return T.Lambda(on_rgb)


def _safe_posterize(tf, aa) -> None:
    """timm's increasing posterize keeps 0 bits at the top magnitude, which Pillow refuses (ValueError mid-epoch):
    keep at least 1 bit, the nearest valid image."""
    from PIL import ImageOps

    def posterize(img, bits, **kw):
        return img if bits >= 8 else ImageOps.posterize(img, max(1, int(bits)))

    ops = list(getattr(tf, "ops", []) or []) + [op for sub in getattr(tf, "policy", []) or [] for op in sub]
    for op in ops:
        if getattr(op, "aug_fn", None) is aa.posterize:
            op.aug_fn = posterize


def augmenting(data) -> bool:
    """Whether training sees random transforms (then features cannot be cached)."""
    aug = data.augment
    return bool(aug.random_resized_crop or aug.horizontal_flip or aug.color_jitter > 0 or aug.policy
                or aug.random_erasing > 0)


def check_images(ds, column: str, split: str):
    """Decode every image once before training, so a broken file is named now, not mid-epoch."""
    from datasets import Image
    from PIL import Image as PILImage

    raw = ds.cast_column(column, Image(decode=False))
    for i, item in enumerate(raw[column]):
        where = item.get("path") or f"{split} row {i}"
        try:
            src = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
            with PILImage.open(src) as im:
                im.load()
        except Exception as e:
            raise HftlError(f"Image '{where}' (data.image_column_name '{column}') cannot be decoded: {e}. "
                            "Remove or replace the file.") from None


def image_datasets(splits, processor, data, model=None, keep: tuple[str, ...] = ()):
    """(train, validation) of pixel_values and labels (and the `keep` columns as they are). Train: torchvision
    transforms (augmentation) at the processor's size; evaluation: the processor itself, the one saved with the
    run, so the ecosystem's loaders preprocess exactly as the run's evaluation did."""
    from datasets import Image

    column = data.image_column_name
    if column not in splits.train.column_names:
        raise HftlError(
            f"Recipe key 'data.image_column_name': column '{column}' not in the data; columns are: "
            f"{', '.join(splits.train.column_names)}.{did_you_mean(column, splits.train.column_names)}")
    pre = preprocessing_of(processor)
    if data.image_size and model is not None:
        check_input_size(model, pre.size)
    # Without augmentation, train on exactly what evaluation (and the saved processor) computes.
    train_tf = train_transforms(pre, data.augment) if augmenting(data) else None

    def evaluation_tf(images):
        return list(processor(images=images, return_tensors="pt")["pixel_values"])

    out = []
    for name, ds, train in (("train", splits.train, True), ("validation", splits.validation, False)):
        if not isinstance(ds.features[column], Image):
            ds = ds.cast_column(column, Image())  # e.g. file paths in a csv
        check_images(ds, column, name)

        def apply(batch, train=train):
            images = [im.convert("RGB") for im in batch[column]]
            pixels = [train_tf(im) for im in images] if train and train_tf else evaluation_tf(images)
            return {"pixel_values": pixels, "labels": batch["labels"], **{k: batch[k] for k in keep}}

        ds = ds.remove_columns([c for c in ds.column_names if c not in (column, "labels", *keep)])
        ds.set_transform(apply)
        out.append(ds)
    return out[0], out[1]


def _prepare(splits, processor, data, model=None):
    train, validation = image_datasets(splits, processor, data, model)
    return train, validation, default_data_collator


def check_input_size(model, size: tuple[int, int]):
    """One forward pass on a blank image: models with a fixed input size (ViT) fail here, not mid-epoch."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device))
    except Exception as e:
        raise HftlError(f"Recipe key 'data.image_size' {list(size)}: {type(model).__name__} does not take images of "
                        f"this size ({str(e).splitlines()[0] if str(e) else type(e).__name__}). Remove the key to use "
                        "the checkpoint's own size, or pick a model that takes any size (convolutional nets).") from None
    finally:
        model.train(was_training)


def describe_image_preprocessing(processor, data) -> str:
    p = preprocessing_of(processor)
    aug = data.augment
    crop = f" -> center crop {p.size}" if p.resize != p.size else ""
    return (f"{type(processor).__name__}: resize {p.resize}{crop}, {p.interpolation.value}, mean {p.mean}, std {p.std}; "
            f"train augmentation: random_resized_crop={aug.random_resized_crop}"
            f"{f' (scale {tuple(aug.crop_scale)})' if aug.random_resized_crop else ''}, "
            f"horizontal_flip={aug.horizontal_flip}, color_jitter={aug.color_jitter}, policy={aug.policy or 'none'}, "
            f"random_erasing={aug.random_erasing}")


def _prepare_inputs(dataset, processor, data):
    """Unlabelled images (paths, PIL images or an Image column) -> pixel_values by the run's own processor."""
    from datasets import Image

    column = data.image_column_name
    if column not in dataset.column_names:
        raise HftlError(f"Recipe key 'data.image_column_name': column '{column}' not in the inputs; columns are: "
                        f"{', '.join(dataset.column_names)}.{did_you_mean(column, dataset.column_names)}")
    if not isinstance(dataset.features[column], Image):
        dataset = dataset.cast_column(column, Image())
    check_images(dataset, column, "input")
    dataset = dataset.remove_columns([c for c in dataset.column_names if c != column])

    def apply(batch):
        images = [im.convert("RGB") for im in batch[column]]
        return {"pixel_values": list(processor(images=images, return_tensors="pt")["pixel_values"])}

    dataset.set_transform(apply)
    return dataset


@register_task
class ImageClassification(ClassificationTask):
    name = "image-classification"
    auto_model = AutoModelForImageClassification
    example_input = '"path/to/image.jpg"'
    processor_arg = ("image_processor", "AutoImageProcessor")
    folder_layout = "<label>/<image>"
    folder_files = "image"
    input_suffixes = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

    def input_column(self, data) -> str:
        return data.image_column_name

    def load_folder(self, folders):
        import datasets

        files = {split: str(Path(folder) / "**") for split, folder in folders.items()}
        return datasets.load_dataset("imagefolder", data_files=files, drop_labels=False)

    def load_processor(self, model_section, path: str, data):
        return AutoImageProcessor.from_pretrained(
            model_section.image_processor_name or path, revision=model_section.model_revision,
            trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)

    portable_processor = staticmethod(portable_image_processor)
    augmenting = staticmethod(augmenting)
    prepare = staticmethod(_prepare)
    prepare_inputs = staticmethod(_prepare_inputs)
    describe_preprocessing = staticmethod(describe_image_preprocessing)
