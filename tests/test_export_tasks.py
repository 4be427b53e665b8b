"""Export for the audio and NER tasks too: the ONNX, INT8 and pruned folders load as runs and agree with the
float model on the toy validation set."""

from __future__ import annotations

import pytest

import hftl
from test_token_classification import ner_bert_dir, ner_files, ner_recipe  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _agreement(a: list[dict], b: list[dict], key: str) -> float:
    pairs = [(x, y) for r, s in zip(a, b) for x, y in zip(*((r[key], s[key]) if isinstance(r[key], list)
                                                          else ([r[key]], [s[key]])))]
    return sum(x == y for x, y in pairs) / len(pairs)


def test_audio_exports(w2v_dir, audio_dirs, tmp_path):
    from test_audio import audio_recipe

    r = hftl.train(audio_recipe(w2v_dir, audio_dirs, tmp_path, training={"num_train_epochs": 2}))
    clips = sorted(str(p) for p in audio_dirs[1].rglob("*.wav"))
    base = hftl.predict(r.output_dir, clips, batch_size=1)
    for kind in ({"onnx": True}, {"int8": True}, {"prune": 0.3}):
        folder = hftl.export(r.output_dir, **kind)
        assert (folder / "recipe.yaml").is_file() and (folder / "export.md").is_file()
        rows = hftl.predict(folder, clips, batch_size=1)
        assert len(rows) == len(base)
        if "prune" not in kind:  # 30% of a 32-wide model's weights gone: labels may move (test_export checks prune)
            assert _agreement(rows, base, "label") >= 0.95


def test_ner_exports(ner_recipe):  # noqa: F811
    r = hftl.train(ner_recipe(training={"num_train_epochs": 4}))
    texts = ["alice jones visited berlin today", "today bob smith went to paris"]
    base = hftl.predict(r.output_dir, texts)
    for kind in ({"onnx": True}, {"int8": True}):
        folder = hftl.export(r.output_dir, **kind)
        assert _agreement(hftl.predict(folder, texts), base, "tags") >= 0.95
