"""Self-training (`self_training:`, `hftl adapt`): pseudo-label rounds on a toy colour shift.

Source images are red-ish or blue-ish noise (the class is the colour). The target domain shifts the colours by
an amount t ~ U(0, 1) per image: red fades into green, blue takes on some green. A tiny ViT trained on the
source labels the slightly shifted target images confidently and correctly, the strongly shifted red ones not;
training on its own confident target predictions teaches it the shift, so the next round gets more right.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import merge_sections


def shifted_folder(root, n_per_class: int, seed: int, lo: float, hi: float, label_names=("red", "blue")):
    """An image folder of the two classes with colour shift t ~ U(lo, hi); `label_names` name the sub-folders
    (swapped names make a label column that is wrong on every row)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, folder in zip(("red", "blue"), label_names):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            t = rng.uniform(lo, hi)
            img = rng.integers(0, 90, size=(32, 32, 3)).astype(float)
            strong = rng.integers(160, 255, size=(32, 32)).astype(float)
            if label == "red":
                img[..., 0] = np.maximum(img[..., 0], (1 - t) * strong)
                img[..., 1] = np.maximum(img[..., 1], t * strong)
            else:
                img[..., 2] = strong
                img[..., 1] = np.maximum(img[..., 1], 0.4 * t * strong)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / folder / f"{label}{i}.png")
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    d = tmp_path_factory.mktemp("domains")
    return {"source": shifted_folder(d / "source", 24, 0, 0, 0), "validation": shifted_folder(d / "validation", 16, 1, 0, 0),
            # the target's label column is wrong on every row: self-training must never train on it
            "unlabeled": shifted_folder(d / "unlabeled", 48, 2, 0, 1, label_names=("blue", "red")),
            "target": shifted_folder(d / "target", 32, 3, 0, 1)}


@pytest.fixture
def st_recipe(vit_dir, domains, tmp_path):
    def make(**sections):
        recipe = {
            "task": "image-classification",
            "model": {"model_name_or_path": str(vit_dir)},
            "data": {"train_dir": str(domains["source"]), "validation_dir": str(domains["validation"]), "augment": False},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 3, "learning_rate": 2e-3,
                         "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32, "save_strategy": "no",
                         "logging_steps": 50, "report_to": "none", "dataloader_num_workers": 0},
            "self_training": {"unlabeled": str(domains["unlabeled"]), "target_eval": str(domains["target"]),
                              "threshold": 0.8, "rounds": 2},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


def _confident(run_dir, folder, threshold):
    """Recomputed from the saved round: how many target images its model labels with probability >= threshold."""
    import hftl

    return sum(r["score"] >= threshold for r in hftl.predict(run_dir, [str(folder)]))


def test_pseudo_label_rounds_raise_target_accuracy(st_recipe, domains, tmp_path):
    import hftl

    result = hftl.train(st_recipe())
    rounds = result.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    first, last = rounds[0], rounds[-1]
    assert first["pseudo_labels"] == 0
    assert last["target_accuracy"] > first["target_accuracy"]  # the point: the target domain got better
    assert last["eval_accuracy"] >= first["eval_accuracy"] - 0.05  # without losing the source
    # each round trains on what the round before kept: its confident predictions, recomputed from its saved model
    out = tmp_path / "out"
    for i in (0, 1):
        kept = rounds[i]["next"]["kept"]
        assert rounds[i + 1]["pseudo_labels"] == kept > 0
        assert kept == _confident(out / "rounds" / f"round-{i}", domains["unlabeled"], 0.8)
        assert sum(rounds[i]["next"]["per_class"].values()) == kept
        # the target's (deliberately wrong) label column scored the pseudo-labels but never trained: the rounds
        # agree with the true colours, so they disagree with it
        assert rounds[i]["next"]["pseudo_accuracy"] < 0.2
    # the last round is the run in output_dir; earlier rounds are complete runs of their own
    assert (out / "model.safetensors").is_file() and (out / "rounds" / "round-1" / "model.safetensors").is_file()
    saved = json.loads((out / "self_training.json").read_text())
    assert [r["target_accuracy"] for r in saved["rounds"]] == [r["target_accuracy"] for r in rounds]
    card = (out / "README.md").read_text()
    assert "## Self-training (pseudo-labels)" in card
    assert card.index("## Self-training") < card.index("## Framework versions")
    section = card[card.index("## Self-training"):].splitlines()
    row = next(line for line in section if line.startswith("| 2 |"))
    assert f"{last['target_accuracy']:.4f}" in row and f"| {last['pseudo_labels']:,} |" in row


def test_max_fraction_keeps_the_most_confident(st_recipe, domains, tmp_path):
    import hftl

    result = hftl.train(st_recipe(self_training={"rounds": 1, "max_fraction": 0.25, "threshold": 0.5}))
    kept = result.rounds[0]["next"]["kept"]
    assert kept == int(0.25 * 96)
    # the kept rows are the round-0 model's most confident ones
    rows = hftl.predict(tmp_path / "out" / "rounds" / "round-0", [str(domains["unlabeled"])])
    conf = sorted((r["score"] for r in rows), reverse=True)
    # the most confident predictions: exactly `kept` rows reach the confidence of the last one kept
    assert conf[kept - 1] >= 0.5 and conf[kept] <= conf[kept - 1]
    assert result.rounds[1]["pseudo_labels"] == kept


def test_adapt_starts_from_a_finished_run(st_recipe, domains, tmp_path):
    from hftl.cli import main

    source = st_recipe()
    del source["self_training"]
    import hftl

    base = hftl.train(source)
    before = base.metrics["eval_accuracy"]
    assert main(["adapt", str(base.output_dir), "--unlabeled", str(domains["unlabeled"]), "--target-eval",
                 str(domains["target"]), "--threshold", "0.8", "--rounds", "1"]) == 0
    adapted = tmp_path / "out-adapted"
    saved = json.loads((adapted / "self_training.json").read_text())["rounds"]
    assert saved[0]["run"] == str(base.output_dir) and saved[0]["eval_accuracy"] == before  # round 0 is the run
    assert not (adapted / "rounds").exists()  # nothing trained for round 0
    assert saved[1]["pseudo_labels"] > 0 and saved[1]["target_accuracy"] > saved[0]["target_accuracy"]
    assert hftl.load_recipe(adapted / "recipe.yaml").self_training.unlabeled == str(domains["unlabeled"])
