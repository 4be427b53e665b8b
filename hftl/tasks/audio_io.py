"""Audio input without torchaudio, torchcodec or FFmpeg: decode, down-mix, resample, log-mel, MFCC statistics.

Plain functions on numpy arrays; they never read a recipe. Bad input raises `HftlError` with one line naming
the file. The pieces:

- `read_audio(item)` -> (float32 mono wave, sampling rate). `item` is a path, raw bytes, what
  `datasets.Audio(decode=False)` stores (`{"bytes": ..., "path": ...}`, either may be None), or an already
  decoded `{"array": ..., "sampling_rate": ...}`. Files are decoded by libsndfile (soundfile): WAV, FLAC,
  OGG/Vorbis/Opus, and MP3 where the libsndfile build has it (the soundfile wheels' 1.2.x builds do). Channels are
  averaged to mono. (datasets' own `Audio` decoding needs torchcodec: never decode through it.)
- `resample(wave, orig_sr, target_sr)`: soxr, "HQ" quality; returns the input unchanged when the rates match.
- `load_clip(item, target_sr)`: read + resample, the one call a task needs per example.
- `log_mel(...)`: a (n_mels, frames) mel spectrogram in dB, computed by `transformers.audio_utils`
  (`window_function`, `mel_filter_bank`, `spectrogram`); Slaney mel scale and area normalisation, as librosa.
- `spectrogram_image(logmel)`: that spectrogram as an RGB picture for an image-classification checkpoint
  (the AST route). dB values are taken relative to the clip's own maximum and clipped `top_db` below it, so
  every clip maps the same way and loudness does not matter; the checkpoint's image processor then resizes and
  normalises (mean/std) it like any photo.
- `mfcc_stats(wave, sr)`: mean and std over time of the MFCCs (DCT-II of the log-mel), a fixed-length vector for a
  logistic-regression baseline.
- `random_crop(wave, max_samples, rng)`: the train-time crop of transformers' run_audio_classification
  (`random_subsample`), drawn from a numpy Generator so it is reproducible.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from hftl.errors import HftlError

_FORMATS = "WAV, FLAC, OGG (Vorbis/Opus) or MP3"


def _name(item: Any) -> str:
    """How an error message names an audio item: its path when it has one."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, dict) and item.get("path"):
        return os.fspath(item["path"])
    return "<audio bytes>" if isinstance(item, (bytes, bytearray, dict)) else f"<{type(item).__name__}>"


def _mono(wave: np.ndarray, name: str, channel_axis: int | None = None) -> np.ndarray:
    """Average the channels (`channel_axis`; None: a 2-D array's shorter axis, since datasets stores
    multi-channel arrays as (channels, samples) and soundfile reads (samples, channels))."""
    wave = np.asarray(wave)
    if wave.ndim > 2:
        raise HftlError(f"Audio '{name}' has shape {wave.shape}; expected (samples,) or (samples, channels).")
    if wave.size == 0:
        raise HftlError(f"Audio '{name}' holds no samples; remove or replace it.")
    if wave.ndim == 2:
        wave = wave.mean(axis=channel_axis if channel_axis is not None else int(wave.shape[0] > wave.shape[1]))
    return np.ascontiguousarray(wave, dtype=np.float32)


def read_audio(item: Any) -> tuple[np.ndarray, int]:
    """Decode one clip to (float32 mono wave in [-1, 1], sampling rate).

    `item`: a file path (str or PathLike); raw file bytes; a dict with `bytes` and/or `path` (bytes win when both
    are set, as in `datasets.Audio(decode=False)`); or a dict with `array` and `sampling_rate` (already decoded,
    only down-mixed and cast).
    """
    import soundfile as sf

    name = _name(item)
    if isinstance(item, dict) and item.get("array") is not None:
        sr = item.get("sampling_rate")
        if not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise HftlError(f"Audio '{name}' has an array but no valid 'sampling_rate' (got {sr!r}).")
        return _mono(item["array"], name), int(sr)
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            source = io.BytesIO(item["bytes"])
        elif item.get("path"):
            source = os.fspath(item["path"])
        else:
            raise HftlError(f"Audio item {sorted(item)!r} has neither 'bytes', 'path' nor 'array'.")
    elif isinstance(item, (bytes, bytearray)):
        source = io.BytesIO(item)
    elif isinstance(item, (str, os.PathLike)):
        source = os.fspath(item)
    else:
        raise HftlError(f"Cannot read audio from a {type(item).__name__}; expected a path, bytes or a dict with "
                        "'bytes'/'path' or 'array'/'sampling_rate'.")
    if isinstance(source, str) and not os.path.isfile(source):
        raise HftlError(f"Audio file '{source}' does not exist.")
    try:
        wave, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError) as e:  # LibsndfileError is a SoundFileError/RuntimeError
        # libsndfile's own reason (error_string), without the repr of a BytesIO that str(e) would show
        detail = (getattr(e, "error_string", None) or " ".join(str(e).split())).rstrip(".")
        raise HftlError(f"Cannot decode audio file '{name}' ({detail}): it is corrupt or not {_FORMATS}; "
                        "remove or replace it.") from None
    return _mono(wave, name, channel_axis=1), int(sr)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono wave with soxr (high quality); the same array back when the rates are equal."""
    if orig_sr <= 0 or target_sr <= 0:
        raise HftlError(f"Cannot resample from {orig_sr} Hz to {target_sr} Hz: sampling rates must be positive.")
    wave = np.asarray(wave, dtype=np.float32)
    if int(orig_sr) == int(target_sr):
        return wave
    import soxr

    return soxr.resample(wave, int(orig_sr), int(target_sr), quality="HQ").astype(np.float32, copy=False)


def load_clip(item: Any, target_sr: int) -> np.ndarray:
    """`read_audio` then `resample` to `target_sr` (e.g. the feature extractor's `sampling_rate`)."""
    wave, sr = read_audio(item)
    return resample(wave, sr, target_sr)


def log_mel(wave: np.ndarray, sampling_rate: int, n_mels: int = 128, n_fft: int | None = None,
            hop_length: int | None = None, win_length: int | None = None, f_min: float = 0.0,
            f_max: float | None = None) -> np.ndarray:
    """Mel power spectrogram in dB (10 log10, floor -100 dB), float32 of shape (n_mels, frames).

    Defaults follow speech practice: 25 ms Hann windows (`win_length`), 10 ms hops (`hop_length`), `n_fft` the
    next power of two >= `win_length` (512 at 16 kHz), mel bands from `f_min` to `f_max` (default: Nyquist).
    Frames are centred (reflect padding), so frames = 1 + len(wave) // hop_length; a clip shorter than one FFT
    window is zero-padded to one. Row 0 is the lowest mel band.
    """
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise HftlError(f"log_mel needs a non-empty mono wave, got shape {wave.shape}.")
    win_length = win_length or round(0.025 * sampling_rate)
    hop_length = hop_length or round(0.010 * sampling_rate)
    n_fft = n_fft or 1 << (int(win_length) - 1).bit_length()
    f_max = sampling_rate / 2 if f_max is None else f_max
    if win_length > n_fft:
        raise HftlError(f"log_mel: win_length {win_length} is longer than n_fft {n_fft}.")
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    window = window_function(win_length, "hann", frame_length=n_fft)  # zero-padded, centred in n_fft
    filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=f_min,
                              max_frequency=f_max, sampling_rate=sampling_rate, norm="slaney", mel_scale="slaney")
    return spectrogram(wave, window, frame_length=n_fft, hop_length=hop_length, fft_length=n_fft, power=2.0,
                       mel_filters=filters, log_mel="dB", dtype=np.float32)


def spectrogram_image(logmel: np.ndarray, top_db: float = 80.0):
    """A dB spectrogram (n_mels, frames) as a PIL RGB image, height n_mels and width frames.

    Pixel = 255 * (dB - max + top_db) / top_db, clipped to 0..255: the clip's loudest bin is white, anything
    `top_db` or more below it black, whatever the clip's level; the grey value is repeated in all three channels.
    Rows keep `logmel`'s order (row 0 = lowest band). A flat spectrogram (digital silence) is all black.
    """
    from PIL import Image

    logmel = np.asarray(logmel, dtype=np.float64)
    if logmel.ndim != 2 or logmel.size == 0:
        raise HftlError(f"spectrogram_image needs a (n_mels, frames) array, got shape {logmel.shape}.")
    peak = logmel.max()
    if peak == logmel.min():
        grey = np.zeros(logmel.shape, dtype=np.uint8)
    else:
        scaled = (logmel - peak + top_db) * (255.0 / top_db)
        grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


def mfcc_stats(wave: np.ndarray, sr: int, n_mfcc: int = 20, n_mels: int = 64, **log_mel_kwargs) -> np.ndarray:
    """Mean and std over time of `n_mfcc` MFCCs: a float32 vector of length 2 * n_mfcc (means first).

    MFCCs are the orthonormal DCT-II (scipy.fft.dct) of `log_mel(wave, sr, n_mels, ...)` along the mel axis,
    keeping the first `n_mfcc` coefficients (as librosa's `mfcc`).
    """
    from scipy.fft import dct

    if not 0 < n_mfcc <= n_mels:
        raise HftlError(f"mfcc_stats: n_mfcc must be between 1 and n_mels ({n_mels}), got {n_mfcc}.")
    mfcc = dct(log_mel(wave, sr, n_mels=n_mels, **log_mel_kwargs).astype(np.float64), type=2, axis=0,
               norm="ortho")[:n_mfcc]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]).astype(np.float32)


def random_crop(wave: np.ndarray, max_samples: int, rng: np.random.Generator | int) -> np.ndarray:
    """At most `max_samples` consecutive samples from a random offset (train time only; evaluate on whole clips).

    As transformers' run_audio_classification `random_subsample`, except that the offset is drawn uniformly
    from every valid one (0 .. len - max_samples) by `rng` (a numpy Generator, or a seed for one), so a run is
    reproducible. A clip no longer than `max_samples` comes back unchanged; a crop is a view, not a copy.
    """
    if max_samples <= 0:
        raise HftlError(f"random_crop: max_samples must be positive, got {max_samples}.")
    wave = np.asarray(wave)
    if len(wave) <= max_samples:
        return wave
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    start = int(rng.integers(0, len(wave) - max_samples + 1))
    return wave[start:start + max_samples]
