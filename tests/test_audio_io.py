"""hftl.audio: decoding (soundfile), down-mixing, resampling (soxr), log-mel images, MFCC statistics, crops."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from hftl.tasks import audio_io
from hftl.errors import HftlError

SR = 16000


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


def speechlike(sr: int = SR) -> np.ndarray:
    """A chirp with an envelope and some noise: a spectrogram with structure, not one line."""
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    wave = np.sin(2 * np.pi * (200 + 1500 * t) * t) * np.hanning(sr) + 0.01 * rng.standard_normal(sr)
    return (0.5 * wave).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_decodes_each_format_to_float32_mono(tmp_path, fmt):
    x = tone()
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, x, SR)
    for item in (str(path), path, {"path": str(path), "bytes": None}, {"bytes": path.read_bytes(), "path": None}):
        wave, sr = audio_io.read_audio(item)
        assert sr == SR and wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == len(x)
        if fmt == "ogg":  # lossy: same pitch, close level
            assert abs(peak_hz(wave, sr) - 440) <= 2 and abs(np.abs(wave).max() - 0.5) < 0.05
        else:
            np.testing.assert_allclose(wave, x, atol=1e-4)


def test_bytes_win_over_path_and_arrays_pass_through(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(), SR)
    wave, _ = audio_io.read_audio({"bytes": path.read_bytes(), "path": "not/on/disk.wav"})  # as Audio(decode=False)
    assert len(wave) == SR
    decoded = {"array": np.stack([tone(), tone() * 0]), "sampling_rate": 8000}  # (channels, samples)
    wave, sr = audio_io.read_audio(decoded)
    assert sr == 8000 and wave.shape == (SR,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, tone() / 2, atol=1e-6)
    with pytest.raises(HftlError, match="sampling_rate"):
        audio_io.read_audio({"array": tone(), "sampling_rate": None})


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(440), tone(1000, amp=0.2)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), SR)
    wave, sr = audio_io.read_audio(path)
    assert wave.shape == (SR,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-4)


def test_mp3_where_libsndfile_has_it(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no MP3")
    path = tmp_path / "clip.mp3"
    sf.write(path, tone(), SR)
    wave, sr = audio_io.read_audio(path)
    assert sr == SR and abs(peak_hz(wave, sr) - 440) <= 2


def test_resampling_keeps_frequency_and_length():
    x = tone(440, seconds=1.0)
    down = audio_io.resample(x, SR, 8000)
    assert len(down) == 8000 and down.dtype == np.float32 and abs(peak_hz(down, 8000) - 440) <= 1
    up = audio_io.resample(down, 8000, SR)
    assert len(up) == len(x) and abs(peak_hz(up, SR) - 440) <= 1
    np.testing.assert_allclose(up[200:-200], x[200:-200], atol=0.02)  # 440 Hz is far below both Nyquists
    assert audio_io.resample(x, SR, SR) is x  # equal rates: nothing to do


def test_load_clip_reads_and_resamples(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(440, sr=44100), 44100)
    wave = audio_io.load_clip(str(path), SR)
    assert len(wave) == SR and abs(peak_hz(wave, SR) - 440) <= 1


def test_corrupt_or_missing_file_names_it(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(HftlError, match=r"broken\.wav.*remove or replace it"):
        audio_io.read_audio(str(bad))
    good = tmp_path / "cut.ogg"
    sf.write(good, tone(), SR)
    good.write_bytes(good.read_bytes()[:300])  # an interrupted copy
    with pytest.raises(HftlError, match=r"cut\.ogg.*corrupt"):
        audio_io.load_clip({"path": str(good), "bytes": None}, SR)
    with pytest.raises(HftlError, match=r"nope\.wav.*does not exist"):
        audio_io.read_audio(tmp_path / "nope.wav")
    with pytest.raises(HftlError, match=r"in/the/dataset\.flac"):  # bytes from a dataset: named by their path
        audio_io.read_audio({"bytes": b"not audio", "path": "in/the/dataset.flac"})
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(HftlError, match=r"empty\.wav.*no samples"):
        audio_io.read_audio(empty)


def test_log_mel_shape_and_the_image_ignores_loudness():
    x = speechlike()
    for n_mels in (64, 128):
        m = audio_io.log_mel(x, SR, n_mels=n_mels)
        assert m.shape == (n_mels, 1 + SR // 160) and m.dtype == np.float32
    m = audio_io.log_mel(x, SR, n_mels=64, n_fft=1024, hop_length=256, win_length=1024, f_min=50, f_max=4000)
    assert m.shape == (64, 1 + SR // 256)
    assert audio_io.log_mel(x[:100], SR).shape == (128, 4)  # shorter than one window: zero-padded to one
    loud, quiet = audio_io.log_mel(x, SR), audio_io.log_mel(0.05 * x, SR)
    above_floor = quiet > -90  # the -100 dB floor clips a few near-silent bins of the quiet copy
    assert above_floor.mean() > 0.99
    np.testing.assert_allclose((loud - quiet)[above_floor], 20 * np.log10(20), atol=1e-3)  # -26 dB
    images = [np.asarray(audio_io.spectrogram_image(m)) for m in (loud, quiet)]
    assert images[0].shape == (128, 1 + SR // 160, 3) and images[0].dtype == np.uint8
    assert np.abs(images[0].astype(int) - images[1]).max() <= 1  # rounding at most
    assert images[0].max() == 255 and images[0].min() == 0  # the loudest bin white, 80+ dB below black
    assert np.array_equal(images[0][..., 0], images[0][..., 2])
    image = audio_io.spectrogram_image(loud)
    assert image.mode == "RGB" and image.size == (1 + SR // 160, 128)  # PIL: (width = frames, height = mels)
    silent = np.asarray(audio_io.spectrogram_image(audio_io.log_mel(np.zeros(SR, np.float32), SR)))
    assert silent.max() == 0


def test_mfcc_stats_is_a_fixed_length_vector():
    short, long = audio_io.mfcc_stats(speechlike()[:4000], SR), audio_io.mfcc_stats(speechlike(), SR)
    assert short.shape == long.shape == (40,) and long.dtype == np.float32 and np.isfinite(long).all()
    assert audio_io.mfcc_stats(speechlike(), SR, n_mfcc=13).shape == (26,)
    assert (long[20:] >= 0).all()  # the std half
    with pytest.raises(HftlError, match="n_mfcc"):
        audio_io.mfcc_stats(speechlike(), SR, n_mfcc=80, n_mels=64)


def test_random_crop_length_and_determinism():
    x = np.arange(10000, dtype=np.float32)
    a = audio_io.random_crop(x, 4000, np.random.default_rng(0))
    b = audio_io.random_crop(x, 4000, np.random.default_rng(0))
    assert len(a) == 4000 and np.array_equal(a, b)
    assert np.array_equal(a, np.arange(a[0], a[0] + 4000))  # consecutive samples
    rng = np.random.default_rng(1)
    starts = {int(audio_io.random_crop(x, 9999, rng)[0]) for _ in range(50)}
    assert starts == {0, 1}  # every valid offset, the last one included
    assert audio_io.random_crop(x, 20000, rng) is x  # short clips unchanged
    assert np.array_equal(audio_io.random_crop(x, 4000, 0), a)  # a seed works as well
