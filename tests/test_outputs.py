"""What a run leaves in its output dir is readable as the umask says (a teammate, a serving container)."""

from __future__ import annotations

import os
import stat

import pytest

import hftl

FAST = {"num_train_epochs": 1, "learning_rate": 1e-2, "save_strategy": "epoch"}
TEXT_DATA = {"max_train_samples": 16, "max_eval_samples": 8}


@pytest.fixture
def umask():
    before = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(before)


def modes(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask,peft", [(0o022, {"method": "lora", "merge": True}), (0o002, None)],
                         ids=["umask022-adapter-merged", "umask002-full"])
def test_every_output_file_has_the_umask_mode(mask, peft, umask, text_recipe):
    umask(mask)
    result = hftl.train(text_recipe(training=FAST, data=TEXT_DATA, peft=peft))
    found = modes(result.output_dir)
    weights = "adapter_model.safetensors" if peft else "model.safetensors"
    # The files that were 0600: the atomic writer's, the weights', the checkpoints'.
    for name in ("README.md", "metrics.json", "plan.md", "recipe.yaml", "labels.json", weights):
        assert name in found, sorted(found)
    assert any(n.startswith("checkpoint-") and n.endswith(".safetensors") for n in found)
    if peft:
        assert "merged/model.safetensors" in found
    wrong = {n: oct(m) for n, m in found.items() if m != 0o666 & ~mask}
    assert not wrong, wrong
