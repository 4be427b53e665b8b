"""Audio classification: any AutoModelForAudioClassification checkpoint (Wav2Vec2, HuBERT, WavLM, AST, Whisper
encoder) on raw clips, or any image-classification checkpoint on log-mel spectrogram images (the AST/PANNs route).

Clips are decoded with soundfile and resampled with soxr to the feature extractor's `sampling_rate` (or
`data.spectrogram.sampling_rate`), whatever rate each file has: no torchaudio, torchcodec or FFmpeg. As in
transformers' run_audio_classification, `data.max_duration_seconds` crops training clips at a random offset
and evaluation sees whole clips; spectrogram images have one fixed width (`max_duration_seconds`), so there
shorter clips are padded with silence and evaluation takes each clip's start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoModelForAudioClassification

from hftl.errors import HftlError, did_you_mean
from hftl.tasks import audio_io as audio
from hftl.tasks.base import register_task
from hftl.tasks.image_classification import (
    check_input_size,
    describe_image_preprocessing,
    portable_image_processor,
    preprocessing_of,
)
from hftl.tasks.labels import ClassificationTask

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")


def _spectrogram(data) -> bool:
    return data.audio_features == "log_mel"


def _sampling_rate(processor, data) -> int:
    return data.spectrogram.sampling_rate if _spectrogram(data) else int(processor.sampling_rate)


def _frames(data) -> tuple[int, int]:
    """(samples, frames) of a spectrogram image: max_duration_seconds at the spectrogram's rate and hop."""
    sr = data.spectrogram.sampling_rate
    samples = int(round(data.max_duration_seconds * sr))
    hop = data.spectrogram.hop_length or round(0.010 * sr)
    return samples, 1 + samples // hop


def clip_image(item, data, offset: int = 0, wave=None):
    """One clip as the spectrogram image a log_mel run sees (`data`: the run's recipe `data:` section):
    resampled, cut to max_duration_seconds from `offset` (padded with silence), log-mel in dB, 0..255 grey.
    `wave`: the clip already loaded at the spectrogram's rate."""
    s = data.spectrogram
    samples, _ = _frames(data)
    wave = audio.load_clip(item, s.sampling_rate) if wave is None else wave
    wave = wave[offset:offset + samples]
    wave = np.pad(wave, (0, samples - len(wave)))
    mel = audio.log_mel(wave, s.sampling_rate, n_mels=s.n_mels, n_fft=s.n_fft, hop_length=s.hop_length,
                        win_length=s.win_length, f_min=s.f_min, f_max=s.f_max)
    return audio.spectrogram_image(mel, top_db=s.top_db)


def _receptive_field(config) -> int | None:
    """Samples the convolutional feature encoder needs for one frame (Wav2Vec2-style configs), else None."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        return None
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return field


def _items(ds, column: str, base: Path | None) -> list:
    """The column's values as read_audio takes them: paths, or {bytes, path} of a datasets Audio column.
    A relative path that is not there from the working directory is read relative to the data file (`base`)."""
    from datasets import Audio

    if isinstance(ds.features[column], Audio):  # never decode through datasets (torchcodec): raw bytes
        ds = ds.cast_column(column, Audio(decode=False))
    items = list(ds[column])
    if base is None:
        return items
    return [str(base / v) if isinstance(v, str) and not Path(v).is_absolute() and not Path(v).exists() else v
            for v in items]


def _check_clips(items: list, split: str, sr: int, min_samples: int | None, model_name: str) -> None:
    """Decode every clip once before training, so a broken or too short file is named now, not mid-epoch."""
    for item in items:
        wave = audio.load_clip(item, sr)
        if min_samples and len(wave) < min_samples:
            raise HftlError(
                f"Audio clip '{audio._name(item)}' ({split}) is {len(wave) / sr * 1000:.0f} ms long at {sr} Hz, shorter "
                f"than the {min_samples / sr * 1000:.0f} ms ({min_samples} samples) {model_name}'s convolutional feature "
                "encoder needs for one frame: remove the clip or pad it with silence.")


class AudioCollator:
    """Pads raw-audio features per batch with the feature extractor's own `pad` (and its attention mask)."""

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor

    def __call__(self, features: list[dict]):
        import torch

        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        batch = self.feature_extractor.pad(features, return_tensors="pt")
        if labels is not None:
            batch["labels"] = torch.tensor(labels)
        return dict(batch)


@register_task
class AudioClassification(ClassificationTask):
    name = "audio-classification"
    auto_model = AutoModelForAudioClassification
    example_imports = ("import soundfile as sf", "import soxr")
    # pipeline() decodes files with FFmpeg: give it the wave, resampled to the model's rate.
    example_input = ('{"raw": soxr.resample(*sf.read("path/to/clip.wav", dtype="float32"), rate), '
                     '"sampling_rate": rate}')
    processor_arg = ("feature_extractor", "AutoFeatureExtractor")
    folder_layout = "<label>/<clip>.wav|flac|ogg|mp3"
    folder_files = "audio"
    input_suffixes = AUDIO_SUFFIXES

    def input_column(self, data) -> str:
        return data.audio_column_name

    # ------------------------------------------------------------------------------------------ data

    def load_folder(self, folders):
        """The audiofolder layout, read without datasets' Audio feature: a path column and the folder labels."""
        from datasets import Dataset, DatasetDict

        out = {}
        for split, folder in folders.items():
            paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            rows = [(str(p), p.relative_to(folder).parts[0]) for p in paths if len(p.relative_to(folder).parts) > 1]
            out[split] = Dataset.from_dict({"audio": [r[0] for r in rows], "label": [r[1] for r in rows]})
        return DatasetDict(out)

    def model_class(self, data):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification if _spectrogram(data) else self.auto_model

    def load_processor(self, model_section, path: str, data):
        from transformers import AutoFeatureExtractor, AutoImageProcessor

        common = dict(revision=model_section.model_revision, trust_remote_code=model_section.trust_remote_code,
                      cache_dir=model_section.cache_dir)
        if _spectrogram(data):
            return AutoImageProcessor.from_pretrained(model_section.image_processor_name or path, **common)
        return AutoFeatureExtractor.from_pretrained(model_section.feature_extractor_name or path, **common)

    def portable_processor(self, processor, data, model):
        if not _spectrogram(data):
            return processor
        # Spectrograms keep their own size (n_mels x frames) unless data.image_size says otherwise: no crop.
        size = data.image_size or (data.spectrogram.n_mels, _frames(data)[1])
        return portable_image_processor(processor, data.model_copy(update={"image_size": size}), model)

    def configure_model(self, model, model_section) -> None:
        """model.freeze_feature_encoder (default: true where the model has one): transformers' own method
        sets requires_grad False on the conv encoder, so the strategy never makes it trainable."""
        wanted = model_section.freeze_feature_encoder
        has = callable(getattr(model, "freeze_feature_encoder", None))
        if wanted and not has:
            raise HftlError(f"Recipe key 'model.freeze_feature_encoder' is true but {type(model).__name__} has no "
                            "convolutional feature encoder (Wav2Vec2, HuBERT and WavLM have one): remove the key.")
        if has and wanted is not False:
            model.freeze_feature_encoder()

    # ------------------------------------------------------------------------------------------ preprocessing

    def _column(self, ds, data) -> str:
        column = data.audio_column_name
        if column not in ds.column_names:
            raise HftlError(f"Recipe key 'data.audio_column_name': column '{column}' not in the data; columns are: "
                            f"{', '.join(ds.column_names)}.{did_you_mean(column, ds.column_names)}")
        return column

    def _features(self, processor, data, train: bool):
        """item -> the model's inputs for one clip (train: random crop)."""
        import torch

        sr = _sampling_rate(processor, data)
        limit = data.max_duration_seconds

        def offset(n: int, size: int) -> int:
            # torch's RNG, so set_seed / the Trainer's seeding make the crops reproducible
            return int(torch.randint(0, n - size + 1, ()).item()) if train and n > size else 0

        if _spectrogram(data):
            samples, _ = _frames(data)

            def spectrogram(item):
                wave = audio.load_clip(item, sr)
                image = clip_image(item, data, offset(len(wave), samples), wave=wave)
                return {"pixel_values": processor(images=[image], return_tensors="pt")["pixel_values"][0]}

            return spectrogram

        def raw(item):
            wave = audio.load_clip(item, sr)
            if train and limit:
                size = int(round(limit * sr))
                start = offset(len(wave), size)
                wave = wave[start:start + size]
            out = processor(wave, sampling_rate=sr, return_tensors="np")
            return {k: v[0] for k, v in out.items()}

        return raw

    def _with_transform(self, ds, processor, data, train: bool, labels: bool, base: Path | None = None):
        column = self._column(ds, data)
        items = _items(ds, column, base)
        label_values = list(ds["labels"]) if labels else None  # ClassLabel ids
        features = self._features(processor, data, train)
        # Rows carry an index into `items`, not the audio column: formatting an Audio column decodes it (torchcodec).
        from datasets import Dataset

        ds = Dataset.from_dict({"_hftl_row": list(range(len(items)))})

        def apply(batch):
            rows = [features(items[i]) for i in batch["_hftl_row"]]
            out = {k: [r[k] for r in rows] for k in rows[0]}
            if labels:
                out["labels"] = [label_values[i] for i in batch["_hftl_row"]]
            return out

        ds.set_transform(apply)
        return ds, items

    def prepare(self, splits, processor, data, model=None):
        sr = _sampling_rate(processor, data)
        min_samples = None if model is None or _spectrogram(data) else _receptive_field(model.config)
        name = type(model).__name__ if model is not None else "the model"
        out = []
        files = {"train": data.train_file, "validation": data.validation_file or data.train_file}
        for split, ds, train in (("train", splits.train, True), ("validation", splits.validation, False)):
            base = Path(files[split]).parent if files[split] else None
            ds, items = self._with_transform(ds, processor, data, train, labels=True, base=base)
            _check_clips(items, split, sr, min_samples, name)
            out.append(ds)
        if _spectrogram(data) and model is not None:
            check_input_size(model, preprocessing_of(processor).size)
        return out[0], out[1], self.collator(processor, data)

    def collator(self, processor, data):
        from transformers import default_data_collator

        return default_data_collator if _spectrogram(data) else AudioCollator(processor)

    def prepare_inputs(self, dataset, processor, data):
        ds, items = self._with_transform(dataset, processor, data, train=False, labels=False)
        _check_clips(items, "input", _sampling_rate(processor, data), None, "the model")
        return ds

    def augmenting(self, data) -> bool:
        return bool(data.max_duration_seconds)  # random crops

    def describe_preprocessing(self, processor, data) -> str:
        crop = (f"random {data.max_duration_seconds:g} s crops at train time" if data.max_duration_seconds
                else "whole clips")
        if _spectrogram(data):
            s = data.spectrogram
            return (f"soundfile decode, soxr resample to {s.sampling_rate} Hz; log-mel {s.n_mels} bands, "
                    f"{_frames(data)[1]} frames ({data.max_duration_seconds:g} s, hop {s.hop_length or '10 ms'}), "
                    f"dB over {s.top_db:g} dB -> grey image; {crop}; then {describe_image_preprocessing(processor, data)}")
        return (f"soundfile decode, soxr resample to {processor.sampling_rate} Hz, {type(processor).__name__}; {crop}, "
                "whole clips at evaluation")

    # ------------------------------------------------------------------------------------------ card

    def usage(self, data, adapter=False, label_names=()):
        if not _spectrogram(data):
            return None
        return ["import torch", "from transformers import AutoImageProcessor, AutoModelForImageClassification", "",
                "from hftl import load_recipe", "from hftl.tasks.audio_classification import clip_image", "",
                "model = AutoModelForImageClassification.from_pretrained(model_id).eval()",
                "processor = AutoImageProcessor.from_pretrained(model_id)",
                "data = load_recipe(f\"{model_id}/recipe.yaml\").data  # the run's log-mel settings",
                "pixels = processor(images=[clip_image(\"path/to/clip.wav\", data)], return_tensors=\"pt\")[\"pixel_values\"]",
                "with torch.no_grad():", "    print(model.config.id2label[int(model(pixel_values=pixels).logits.argmax())])"]
