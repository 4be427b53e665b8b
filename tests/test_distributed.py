"""Real launches: `accelerate launch hftl/run.py`, and 2 gloo processes (DDP on CPU) with gradual unfreezing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]

pytestmark = pytest.mark.slow


def test_accelerate_launch_run_py_end_to_end(text_recipe, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe()))
    proc = subprocess.run(
        [*ACCELERATE, "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "hftl" / "run.py"), str(recipe), "training.num_train_epochs=3"],
        capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9 and metrics["epoch"] == 3.0
    assert "eval_accuracy" in proc.stdout  # printed at the end


DDP_SCRIPT = r"""
import hashlib, json, sys, torch, hftl
from transformers import TrainerCallback
recipe = json.loads(sys.argv[1])
class Start(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = {n: t.detach().clone() for n, t in model.state_dict().items()}
cb = Start()
r = hftl.train(recipe, callbacks=[cb])
rank = r.trainer.args.process_index
end = r.model.state_dict()
digest = {n: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for n, t in end.items()}
changed = {n: not torch.equal(cb.start[n], end[n]) for n in end}
depth = {n: r.plan.layer_map.depth.get(n) for n in end}
# the same model evaluated by this one process over the whole eval set: must equal the gathered metric
loader = torch.utils.data.DataLoader(r.trainer.eval_dataset, batch_size=16, collate_fn=r.trainer.data_collator)
model = r.model.eval()
right = total = 0
with torch.no_grad():
    for batch in loader:
        labels = batch.pop("labels")
        right += (model(**batch).logits.argmax(-1) == labels).sum().item()
        total += len(labels)
json.dump({"world_size": r.trainer.args.world_size, "local_accuracy": right / total, "eval_count": total, "digest": digest, "changed": changed, "depth": depth,
           "head_depth": r.plan.layer_map.head_depth, "loss": [h["loss"] for h in r.trainer.state.log_history if "loss" in h],
           "accuracy": r.metrics["eval_accuracy"]},
          open(f"{sys.argv[2]}/rank{rank}.json", "w"))
"""


def _launch_two(recipe, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script), json.dumps(recipe), str(tmp_path)],
        capture_output=True, text=True, env=child_env(), timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)  # really 2 ranks in one process group
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks drifted apart"
    for r in ranks:  # metrics gathered over both ranks = a 1-process evaluation of the same model
        assert r["accuracy"] == r["local_accuracy"] and r["eval_count"] == 32
    return ranks


def test_ddp_two_processes_gradual_unfreezing_ranks_stay_identical(text_recipe, tmp_path):
    """Trap: DDP only all-reduces parameters that required grad when it wrapped the model."""
    recipe = text_recipe(strategy={"gradual_unfreezing": {"every_epochs": 1}},
                         training={"num_train_epochs": 3, "weight_decay": 0.1, "per_device_train_batch_size": 4})
    r0 = _launch_two(recipe, tmp_path)[0]
    head = r0["head_depth"]
    for n, d in r0["depth"].items():
        if d in (head, head - 1, head - 2):  # unfrozen at epochs 0, 1, 2
            assert r0["changed"][n], f"{n} (depth {d}) should have trained after unfreezing"
        elif d is not None:
            assert not r0["changed"][n], f"{n} (depth {d}) is frozen all run but moved"
    # the per-example mean loss is not multiplied by world_size (average_tokens_across_devices trap)
    assert max(r0["loss"]) < 1.0


def test_ddp_two_processes_lora(text_recipe, tmp_path):
    """LoRA + DDP: frozen base weights and a modules_to_save head must not break gradient reduction (peft#951)."""
    recipe = text_recipe(peft={"method": "lora", "r": 4, "lora_alpha": 8},
                         training={"num_train_epochs": 2, "per_device_train_batch_size": 4})
    r0 = _launch_two(recipe, tmp_path)[0]
    lora = [n for n in r0["changed"] if "lora_B" in n]
    assert lora and all(r0["changed"][n] for n in lora)
    assert not any(r0["changed"][n] for n in r0["changed"] if "base_layer" in n or "original_module" in n)
    assert any(r0["changed"][n] for n in r0["changed"] if "modules_to_save" in n)  # the head trains
