"""`hftl predict`: a run's predictions equal the model's own probabilities on the same inputs, for every task,
full models and adapters, single runs and ensembles; bad inputs are one clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import hftl
from hftl.errors import HftlError
from test_token_classification import ner_bert_dir, ner_files, ner_recipe  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(logits) -> np.ndarray:
    return torch.softmax(logits.float(), -1).detach().numpy()


def _check(rows, probs, names):
    assert len(rows) == len(probs)
    for row, p in zip(rows, probs):
        assert row["label"] == names[int(p.argmax())] and row["score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert row["scores"] == pytest.approx({n: float(v) for n, v in zip(names, p)}, abs=1e-5)


def _texts(path) -> list[str]:
    import csv

    with open(path) as f:
        return [r["text"] for r in csv.DictReader(f)][:10]


@pytest.fixture
def text_run(text_recipe):
    return hftl.train(text_recipe(training={"num_train_epochs": 1}))


def test_text_predictions_are_the_models_own(text_run, text_csv):
    from transformers import AutoTokenizer

    texts = _texts(text_csv[1])
    rows = hftl.predict(text_run.output_dir, texts)
    tok = AutoTokenizer.from_pretrained(text_run.output_dir)
    model = text_run.model.eval()
    with torch.no_grad():
        probs = _softmax(model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits)
    _check(rows, probs, text_run.label_names)
    assert [r["input"] for r in rows] == texts
    # a data file with the recipe's text column gives the same lines; the CLI writes them as JSON lines
    out = text_run.output_dir.parent / "preds.jsonl"
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "predict", str(text_run.output_dir), str(text_csv[1]),
                          "--output", str(out), "--top-k", "1"], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HFTL_LOG_LEVEL": "WARNING"})
    assert cli.returncode == 0, cli.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["label"] for x in lines[:10]] == [r["label"] for r in rows]
    assert all(len(x["scores"]) == 1 for x in lines)


def test_an_ensemble_averages_its_members(text_recipe, text_csv, tmp_path):
    a = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "a")}))
    b = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "b")}, seed=1))
    texts = _texts(text_csv[1])
    one, two = hftl.predict(a.output_dir, texts), hftl.predict(b.output_dir, texts)
    both = hftl.predict([a.output_dir, b.output_dir], texts)
    for x, y, z in zip(one, two, both):
        for label in a.label_names:
            assert z["scores"][label] == pytest.approx((x["scores"][label] + y["scores"][label]) / 2, abs=1e-6)


def test_adapter_run_predictions(text_recipe, text_csv):
    from transformers import AutoTokenizer

    r = hftl.train(text_recipe(peft={"method": "lora", "r": 4}, training={"num_train_epochs": 1}))
    texts = _texts(text_csv[1])
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    with torch.no_grad():
        probs = _softmax(r.model.eval()(**tok(texts, padding=True, return_tensors="pt")).logits)
    _check(hftl.predict(r.output_dir, texts), probs, r.label_names)


def test_image_predictions_from_a_folder(image_recipe, image_dirs):
    from PIL import Image
    from transformers import AutoImageProcessor

    r = hftl.train(image_recipe(training={"num_train_epochs": 1}))
    rows = hftl.predict(r.output_dir, [str(image_dirs[1])], batch_size=5)
    paths = [row["input"] for row in rows]
    assert paths == sorted(str(p) for p in image_dirs[1].rglob("*.png"))
    proc = AutoImageProcessor.from_pretrained(r.output_dir)
    pixels = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        _check(rows, _softmax(r.model.eval()(pixel_values=pixels).logits), r.label_names)


def test_audio_predictions_of_clips_at_any_rate(w2v_dir, audio_dirs, tmp_path):
    from transformers import AutoFeatureExtractor

    from hftl.tasks.audio_io import load_clip
    from test_audio import audio_recipe

    r = hftl.train(audio_recipe(w2v_dir, audio_dirs, tmp_path, training={"num_train_epochs": 1}))
    paths = sorted(str(p) for p in audio_dirs[1].rglob("*.wav"))[:4]
    # batch 1: this Wav2Vec2 takes no attention mask, so a clip padded in a batch sees the zeros (as in training)
    rows = hftl.predict(r.output_dir, paths, batch_size=1)
    fe = AutoFeatureExtractor.from_pretrained(r.output_dir)
    model = r.model.eval()
    with torch.no_grad():
        probs = np.concatenate([_softmax(model(**fe(load_clip(p, 16000), sampling_rate=16000, return_tensors="pt")).logits)
                                for p in paths])
    _check(rows, probs, r.label_names)


def test_ner_predictions_are_word_tags(ner_recipe):  # noqa: F811
    from transformers import AutoTokenizer

    r = hftl.train(ner_recipe(training={"num_train_epochs": 2}))
    text = "alice jones visited berlin today"
    [row] = hftl.predict(r.output_dir, [text])
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    enc = tok(text.split(), is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        probs = _softmax(r.model.eval()(**enc).logits)[0]
    ids = enc.word_ids(0)
    first = [j for j, w in enumerate(ids) if w is not None and (j == 0 or ids[j - 1] != w)]
    assert len(first) == 5 < len([w for w in ids if w is not None])  # a word split into sub-tokens
    assert row["tags"] == [r.label_names[int(probs[j].argmax())] for j in first]
    assert row["scores"] == pytest.approx([float(probs[j].max()) for j in first], abs=1e-5)


def test_bad_inputs(text_run, image_recipe, tmp_path, audio_dirs):
    with pytest.raises(HftlError, match="not an hftl output dir"):
        hftl.predict(tmp_path, ["hello"])
    image = hftl.train(image_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "img")}))
    clip = str(next(audio_dirs[1].rglob("*.wav")))
    with pytest.raises(HftlError, match=r"\.wav' is not something task image-classification takes"):
        hftl.predict(image.output_dir, [clip])
    with pytest.raises(HftlError, match="takes files"):
        hftl.predict(image.output_dir, ["a sentence"])
    with pytest.raises(HftlError, match="must share the task and labels"):
        hftl.predict([text_run.output_dir, image.output_dir], ["hello"])


def test_exported_folders_predict_like_the_run(text_run, text_csv):
    """`hftl export` then `hftl predict` on the exported folder: ONNX agrees with PyTorch, pruned loads too."""
    texts = _texts(text_csv[1])
    base = hftl.predict(text_run.output_dir, texts)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HFTL_LOG_LEVEL": "WARNING"}
    for flag in (["--onnx"], ["--prune", "0.3"]):
        cli = subprocess.run([sys.executable, "-m", "hftl.cli", "export", str(text_run.output_dir), *flag],
                             capture_output=True, text=True, timeout=300, env=env)
        assert cli.returncode == 0, cli.stderr[-2000:]
        folder = cli.stdout.strip().splitlines()[-1]
        rows = hftl.predict(folder, texts)
        if flag == ["--onnx"]:
            for x, y in zip(rows, base):
                assert x["scores"] == pytest.approx(y["scores"], abs=1e-4)
        else:
            assert sum(x["label"] == y["label"] for x, y in zip(rows, base)) >= 0.7 * len(base)


def test_a_mean_pooled_run_loads_without_a_warning(text_recipe):
    """`hftl predict` on a pooled run (config model_type hftl_pooled_bert) prints no "model of type" warning."""
    from conftest import child_env

    r = hftl.train(text_recipe(model={"pooling": "mean"}, training={"num_train_epochs": 1}))
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "predict", str(r.output_dir), "good day"],
                         capture_output=True, text=True, timeout=300, env=child_env())
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout)["label"] in r.label_names
    assert "to instantiate a model of type" not in cli.stderr
    # in a terminal too: transformers asks "Do you wish to run the custom code?" (and waits 15 s) whenever a load
    # leaves trust_remote_code unset on this config; hftl's loads never do
    out = _in_a_terminal([sys.executable, "-m", "hftl.cli", "predict", str(r.output_dir), "good day"], child_env())
    assert "custom code" not in out and "model of type" not in out
    assert json.loads(out.strip().splitlines()[-1])["label"] in r.label_names


def _in_a_terminal(cmd: list[str], env: dict, timeout: float = 120) -> str:
    """Run `cmd` with a pseudo-terminal as stdin/stdout/stderr (as a person at a shell would) and return what it
    printed; a prompt waiting for an answer fails the test at `timeout`."""
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(cmd[0], cmd, env)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"no end after {timeout} s; it printed: {out.decode(errors='replace')[-500:]}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # still running: a prompt waiting for an answer
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace").replace("\r\n", "\n")
