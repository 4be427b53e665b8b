"""Transfer quality on sound: does an ImageNet CNN help on log-mel spectrograms, against the same net from scratch?

"A model trained on natural photos doesn't understand spectrograms": this measures how much ImageNet transfer
still gives over random init on two small real audio sets, through hftl's `audio-classification` task.

Data: `zoo:spoken-language` (main: which of bg, ca, es, fr, ro, ru a Tux Paint stamp description is spoken in;
900 train / 300 validation clips, 150 / 50 per language) and `zoo:spoken-digits` (a spoken digit 0-9 in 21
languages; 168 train / 42 validation). The zoo's `validation` split is the reported held-out split; nothing
was tuned on it (no tuning at all: one setting per row, fixed before the run).

Rows (per dataset), every hftl row one recipe dict run with `hftl.train`:

1. EfficientNet-Lite0 (ImageNet-1k, `zoo:efficientnet-lite0`) on log-mel spectrogram images, feature extraction;
2. the same, full fine-tuning;
3. the same, discriminative LR (layer_decay 0.7);
4. the same architecture from random init (timm's own init, saved as a checkpoint folder: see
   `random_cnn_checkpoint` for why not `strategy.reinit`);
5. a small Wav2Vec2 (~1 M parameters) from random init on raw 16 kHz audio;
6. the hand-written baseline: standardised MFCC statistics (`hftl.tasks.audio_io.mfcc_stats`) + scikit-learn
   LogisticRegression;

plus, on spoken-language, a confound probe: LogisticRegression on recording metadata only (duration, channels,
sampling rate), which knows nothing about speech.

    nice -n 10 .venv/bin/python benchmarks/quality_audio.py            # spoken-language rows (31 min on 2 busy cores)
    .venv/bin/python benchmarks/quality_audio.py --quick               # smoke run (64 clips, 1 epoch), not written
    .venv/bin/python benchmarks/quality_audio.py --only language/scratch_cnn   # some rows, the others kept
    .venv/bin/python benchmarks/quality_audio.py --datasets digits     # the spoken-digits rows (9 min)
    .venv/bin/python benchmarks/quality_audio.py --table               # rewrite the table from the .json

Prints a markdown table and writes it to benchmarks/results/quality_audio.md (numbers: quality_audio.json).
Not run in CI.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import load_rows, md_table, merge, run_row, selected, summarize, write_result

NAME = "quality_audio"

# Per dataset: the zoo set, the spectrogram width (= train-time crop, s) and the epochs. Spoken-language clips are
# 0.2-16 s (median 1.15 s): 2 s keeps 81% of them whole (3 s: 91%, at 1.5x the cost per step); digits are single
# words of 0.25-1.5 s, all whole at 1.5 s. Digits has 6 steps an epoch, hence more epochs. The epochs are what fits
# the benchmark's ~25 min on 2 shared cores, not a tuned number.
DATASETS = {
    "language": {"dataset_name": "zoo:spoken-language", "max_duration_seconds": 2.0, "epochs": 3},
    "digits": {"dataset_name": "zoo:spoken-digits", "max_duration_seconds": 1.5, "epochs": 8},
}

# 16 kHz, 64 mel bands, 25 ms windows every 20 ms: a 2 s clip is a 64 x 101 grey image (no resize: data.image_size
# is unset, so the spectrogram keeps its own size), normalised with the checkpoint's ImageNet mean/std.
SPECTROGRAM = {"sampling_rate": 16000, "n_mels": 64, "hop_length": 320}

BASE = {
    "task": "audio-classification",
    "model": {"model_name_or_path": "zoo:efficientnet-lite0"},
    "data": {"audio_features": "log_mel", "spectrogram": SPECTROGRAM},
    "training": {
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "learning_rate": 1e-3,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "eval_strategy": "no",  # train_runtime = training only; hftl.train evaluates once at the end
        "save_strategy": "no",
        "logging_steps": 10,
        # one worker decodes + computes spectrograms while the main process trains (the data is ~1/3 of a step)
        "dataloader_num_workers": 1,
    },
    "seed": 42,
    "overwrite_output_dir": True,
}

# (key, row label, recipe changes). "RANDOM_CNN" / "RANDOM_W2V2" are replaced by the random checkpoints below.
VARIANTS = [
    ("feature_extraction", "EfficientNet-Lite0 ImageNet, log-mel, feature extraction (head lr 3e-3)",
     {"strategy": {"preset": "feature_extraction"}, "training": {"learning_rate": 3e-3}}),
    ("full", "EfficientNet-Lite0 ImageNet, log-mel, full fine-tuning (lr 1e-3)",
     {"strategy": {"preset": "full"}}),
    # 19 depth groups (stem, 16 MBConv blocks, conv_head + bn2, classifier): the stem learns 0.7^18 = 0.0016x the
    # head's lr, the middle blocks ~0.7^9 = 0.04x.
    ("discriminative", "EfficientNet-Lite0 ImageNet, log-mel, discriminative LR (head 1e-3, decay 0.7)",
     {"strategy": {"discriminative_lr": {"layer_decay": 0.7}}}),
    ("auto", "EfficientNet-Lite0 ImageNet, log-mel, `strategy.preset: auto` (its choice: results/auto_strategy.md)", {"strategy": {"preset": "auto"}}),
    ("scratch_cnn", "EfficientNet-Lite0 from random init (timm init), log-mel, full training (lr 1e-3)",
     {"model": {"model_name_or_path": "RANDOM_CNN"}, "strategy": {"preset": "full"}}),
    # A random conv feature encoder must train: hftl freezes it by default (right for pretrained speech models).
    ("scratch_wav2vec2", "small Wav2Vec2 from random init, raw 16 kHz audio, full training (lr 1e-3)",
     {"model": {"model_name_or_path": "RANDOM_W2V2", "freeze_feature_encoder": False},
      "data": {"audio_features": "raw", "spectrogram": None}, "strategy": {"preset": "full"}}),
]


def random_cnn_checkpoint(folder: Path) -> str:
    """zoo:efficientnet-lite0's config.json (same architecture and preprocessing) with timm's own fresh init.

    Not `strategy.reinit: {from_depth: 0}`: on this TimmWrapper model it re-initialises the convolutions with
    transformers' generic N(0, 0.02) but leaves every BatchNorm's running_mean / running_var at the ImageNet
    values (hftl/hooks/reinit.py clears transformers' `_is_hf_initialized` flag on parameters, not on buffers), so
    it is not a clean random network. This folder is: timm's initialisation, fresh BN statistics."""
    import timm
    import torch
    from safetensors.torch import save_file

    from hftl import zoo

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(zoo.resolve_model("zoo:efficientnet-lite0")) / "config.json", folder / "config.json")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return str(folder)


def random_wav2vec2_checkpoint(folder: Path) -> str:
    """A small Wav2Vec2 (7 conv layers of 32 channels, 320x down-sampling to 50 frames/s, 4 pre-LN transformer layers
    of 128) with a 16 kHz Wav2Vec2FeatureExtractor. Layer-norm conv encoder + attention mask, as the large
    wav2vec2 checkpoints, so whole clips padded in one evaluation batch score as they would alone. SpecAugment
    and layer drop off: the CNN rows have no augmentation but random crops either."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        conv_dim=(32,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8, classifier_proj_size=128,
        apply_spec_augment=False, layerdrop=0.0, vocab_size=8)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return str(folder)


def _splits(dataset: str, quick: bool):
    """(train, validation) datasets as the hftl rows see them (quick: hftl's own max_train/eval_samples cut)."""
    from hftl import zoo

    data = zoo.load_dataset(dataset, None)
    train, val = data["train"], data["validation"]
    if quick:
        train = train.shuffle(seed=BASE["seed"]).select(range(min(64, len(train))))
        val = val.select(range(min(48, len(val))))
    return train, val, train.features["label"].names


def _scores(y_true, pred, names) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    labels = list(range(len(names)))
    recall = recall_score(y_true, pred, labels=labels, average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, pred)),
            "f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
            "recall": {n: float(r) for n, r in zip(names, np.asarray(recall))}}


def mfcc_baseline(dataset: str, quick: bool) -> dict:
    """The hand-written way: mean + std of 20 MFCCs over each whole clip (16 kHz, 64 mel bands), standardised,
    LogisticRegression. "train s" = MFCCs of the training clips + fitting."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hftl.tasks import audio_io as audio

    train, val, names = _splits(dataset, quick)
    sr = SPECTROGRAM["sampling_rate"]

    def features(split):
        return np.stack([audio.mfcc_stats(audio.load_clip(p, sr), sr, n_mfcc=20, n_mels=64) for p in split["audio"]])

    t0 = time.perf_counter()
    x_train = features(train)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, train["label"])
    train_s = time.perf_counter() - t0
    return {**_scores(val["label"], clf.predict(features(val)), names), "train_s": train_s,
            "trainable": x_train.shape[1] * len(names) + len(names)}


def metadata_probe(dataset: str, quick: bool) -> dict:
    """No sound at all: duration, channel count and sampling rate of each file (soundfile.info), standardised,
    LogisticRegression. What a model could score from recording conditions alone."""
    import numpy as np
    import soundfile as sf
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val, names = _splits(dataset, quick)

    def features(split):
        infos = [sf.info(p) for p in split["audio"]]
        return np.array([[i.duration, i.channels, i.samplerate / 1000] for i in infos])

    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(features(train), train["label"])
    train_s = time.perf_counter() - t0
    return {**_scores(val["label"], clf.predict(features(val)), names), "train_s": train_s,
            "trainable": 3 * len(names) + len(names)}


def run_recipe(recipe: dict, per_class: bool) -> dict:
    import numpy as np

    import hftl

    result = hftl.train(recipe)
    row = summarize(result)
    if not per_class:
        return row
    # Per-class recall from one more pass over the validation set (the same inputs hftl.train evaluated on).
    out = result.trainer.predict(result.trainer.eval_dataset)
    pred = np.asarray(out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions).argmax(-1)
    scores = _scores(out.label_ids, pred, result.label_names)
    assert abs(scores["accuracy"] - row["accuracy"]) < 1e-6, (scores["accuracy"], row["accuracy"])
    return {**row, "recall": scores["recall"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated: run only the rows whose key (dataset/row) contains one of these")
    ap.add_argument("--datasets", default="language",
                    help="comma-separated: language (default), digits (not in the default run: it does not fit the "
                    "~25 min budget on busy cores)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 train / 48 validation clips, 1 epoch; "
                    "results not written")
    ap.add_argument("--table", action="store_true", help="run nothing: print and write the table from "
                    "results/quality_audio.json")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    keep = not args.quick
    datasets = [] if args.table else [d for d in args.datasets.split(",") if d]
    for d in datasets:
        if d not in DATASETS:
            ap.error(f"unknown dataset {d!r}; allowed: {', '.join(DATASETS)}")

    raw = load_rows(NAME, keep)
    work = Path(tempfile.mkdtemp(prefix="hftl-bench-audio-"))
    t_start = time.perf_counter()
    try:
        checkpoints = {"RANDOM_CNN": lambda: random_cnn_checkpoint(work / "random-cnn"),
                       "RANDOM_W2V2": lambda: random_wav2vec2_checkpoint(work / "random-w2v2")}
        made: dict[str, str] = {}
        for d in datasets:
            spec = DATASETS[d]
            for key, label, changes in VARIANTS:
                row_key = f"{d}/{key}"
                if not selected(row_key, only):
                    continue
                recipe = merge(BASE, {"data": {"dataset_name": spec["dataset_name"],
                                               "max_duration_seconds": spec["max_duration_seconds"]},
                                      "training": {"num_train_epochs": spec["epochs"]}})
                recipe = merge(recipe, changes)
                if recipe["data"].get("spectrogram") is None:
                    recipe["data"].pop("spectrogram", None)
                name = recipe["model"]["model_name_or_path"]
                if name in checkpoints:
                    made.setdefault(name, checkpoints[name]())
                    recipe["model"]["model_name_or_path"] = made[name]
                recipe["training"]["output_dir"] = str(work / d / key)
                if args.quick:
                    recipe["data"].update(max_train_samples=64, max_eval_samples=48)
                    recipe["training"]["num_train_epochs"] = 1
                run_row(NAME, raw, row_key, label, lambda: run_recipe(recipe, per_class=d == "language"), keep)
            if selected(f"{d}/mfcc_logreg", only):
                run_row(NAME, raw, f"{d}/mfcc_logreg", "MFCC statistics + LogisticRegression",
                        lambda: mfcc_baseline(spec["dataset_name"], args.quick), keep)
            if d == "language" and selected(f"{d}/metadata_probe", only):
                run_row(NAME, raw, f"{d}/metadata_probe", "recording metadata only + LogisticRegression",
                        lambda: metadata_probe(spec["dataset_name"], args.quick), keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nwall time of this run: {time.perf_counter() - t_start:.0f} s", flush=True)

    all_rows = [(key, label) for key, label, _ in VARIANTS]
    all_rows += [("mfcc_logreg", "hand-written baseline: MFCC mean+std (40-d), standardised, sklearn "
                                 "LogisticRegression (not hftl)"),
                 ("metadata_probe", "confound probe: duration + channels + sampling rate only, LogisticRegression "
                                    "(no sound)")]
    tables = []
    for d in DATASETS:
        spec = DATASETS[d]
        rows = []
        for key, label in all_rows:
            if key == "metadata_probe" and d != "language":
                continue
            r = raw.get(f"{d}/{key}")
            if r is None:
                rows.append([label, "not run", "", "", ""] + (["", ""] if d == "language" else []))
                continue
            row = [label, r["accuracy"], r["f1"], f"{r['train_s']:.0f}", f"{r['trainable']:,}"]
            if d == "language":
                rec = r["recall"]
                row += [f"{rec['ca']:.2f}", " ".join(f"{rec[n]:.2f}" for n in rec if n != "ca")]
            rows.append(row)
        headers = ["row", "accuracy", "macro-F1", "train s", "trainable params"]
        if d == "language":
            headers += ["ca recall", "recall bg es fr ro ru"]
        tables.append(f"### `{spec['dataset_name']}` ({spec['epochs']} epochs, spectrogram "
                      f"{spec['max_duration_seconds']:g} s)\n\n" + md_table(headers, rows))
    tables = "\n\n".join(tables)

    body = f"""
The seeds' question: "a model trained on natural photos doesn't understand spectrograms -- how much does
ImageNet transfer give over scratch on sound?" EfficientNet-Lite0 with ImageNet-1k weights (`zoo:efficientnet-lite0`)
against the same network from random init, both on log-mel spectrogram images (`data.audio_features: log_mel`:
16 kHz, 64 mel bands, 25 ms windows, 20 ms hop, dB down to 80 dB below each clip's peak -> grey image, ImageNet
mean/std; `max_duration_seconds` 2 s = 64 x 101 px on spoken-language, 1.5 s = 64 x 76 px on digits; no resize),
plus a small Wav2Vec2 from scratch on the raw waveform and the hand-written MFCC baseline. Batch 32, AdamW,
warmup 10%, weight decay 0.01, seed 42, random `max_duration_seconds` crops at train time (shorter clips padded with
silence; evaluation: each clip's start for spectrograms, the whole clip for Wav2Vec2). One setting per row,
chosen before the run; nothing tuned on the validation split, which is the reported held-out split. "train s" is
the Trainer's train_runtime (sklearn rows: features of the training clips + fit). Recall columns: per language
on the validation split (hftl rows: from a second pass over hftl's own evaluation inputs, checked to give the same
accuracy).

{tables}

Findings (spoken-language, one seed, 300 validation clips: +-1 clip = 0.003):
- ImageNet init beats random init by a wide margin on spectrograms: full fine-tuning 0.997 vs the same network
  and recipe from scratch 0.677 (+32 points); even the frozen ImageNet features with a linear head (0.883) are
  20 points above the scratch CNN. A small Wav2Vec2 from scratch on raw audio (0.667) does no better than the
  scratch CNN. Caveat: 3 epochs (87 steps) is a short budget, which favours the pretrained start (it converges
  faster); the scratch rows use the pretrained rows' recipe, not a tuned from-scratch one.
- Discriminative LR (decay 0.7: the stem at 0.0016x, mid blocks ~0.04x the head's lr) lands between feature
  extraction and full fine-tuning (0.930): the lower layers have to move away from photo features, and a steep
  decay keeps them close to ImageNet.
- The hand-written baseline is as good as the best network: standardised MFCC mean+std and LogisticRegression
  reach 0.990 in 8 s. 40 numbers per clip (the average spectral envelope and its spread) separate these six
  classes: each language is read by very few voices with its own microphone and room, so the data set rewards
  telling speakers / recordings apart at least as much as languages. Do not read any row as language ID.
- Recording-condition confound: the Catalan clips are almost all mono and short (median 0.9 s), the other five
  languages' are stereo 44.1 kHz and longer (median 1.0-1.6 s). Everything is down-mixed to mono and resampled
  to 16 kHz, but duration survives (a short clip is mostly padding in its spectrogram). The metadata probe, which
  hears no sound (duration, channels, sampling rate only), scores 0.347 (chance 0.167): Catalan recall
  1.00, then French 0.68 and Romanian 0.34, the rest near 0. Catalan is not the easy class for the networks,
  though (ca recall 0.84 frozen, 0.68 scratch, 0.82 discriminative): they do not just read the channel count or
  the length.
- Spoken digits (42 validation clips: +-1 clip = 0.024; chance 0.10) is at chance for every row (0.05-0.21):
  168 clips of one word each in 21 languages + a default voice, about one recording per digit and language, so
  a validation clip is usually a number word never heard in training. It says nothing about transfer at this
  size; it stays in the script (`--datasets language,digits`) but not in the default run.

Notes:
- Random init (row 4) is a checkpoint folder with zoo:efficientnet-lite0's config.json and timm's own
  initialisation (seed 0), not `strategy.reinit: {{from_depth: 0}}`: on this TimmWrapper model that re-initialises
  convolutions with transformers' N(0, 0.02) but keeps every BatchNorm's ImageNet running_mean/var (hftl/hooks/
  reinit.py clears transformers' `_is_hf_initialized` flag on parameters only; buffers keep it, so the init
  skips them), i.e. not a clean random network.
- The small Wav2Vec2 (0.96 M parameters): 7 conv layers x 32 channels (320x down-sampling, 50 frames/s),
  layer-norm conv encoder, 4 pre-LN transformer layers of 128, 4 heads, 16 kHz Wav2Vec2FeatureExtractor with
  attention mask; SpecAugment and layer drop off; `model.freeze_feature_encoder: false` (hftl freezes the conv
  encoder by default, right for pretrained speech checkpoints, wrong for a random one).
- Feature extraction does not use `strategy.cache_features`: the random train-time crops are augmentation, so
  the frozen backbone runs every epoch (forward only; on busy cores it was bound by decoding + spectrograms).
- Timings: a 2-core machine shared with other work (load 4-6 during the spoken-language run, ~3 during digits):
  a full-network EfficientNet step (batch 32, 64 x 101) took ~6.5 s there (a bare timm step, no data: ~1.3 s
  in a quiet moment). The spoken-language run took 31 min wall, the digits run 9 min: compare train times only
  as orders of magnitude.
"""
    title = "Audio transfer quality: ImageNet EfficientNet-Lite0 vs scratch on spectrograms"
    write_result(NAME, title, body, save=keep)


if __name__ == "__main__":
    main()
