"""The transfer-learning hooks do what they promise -- and each trap fails its test when not handled."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

import hftl
import tiny_models
from hftl.errors import HftlError
from hftl.recipe import StrategySection
from hftl.strategy import layer_map_for
from hftl.hooks import build_layer_map, find_head

# ------------------------------------------------------------------------------------------ layer map


@pytest.mark.parametrize("name", sorted(tiny_models.ALL))
def test_layer_map_covers_every_architecture(name):
    model = tiny_models.ALL[name]()
    lm = build_layer_map(model)
    names = [n for n, _ in model.named_parameters()]
    assert set(lm.depth) == set(names)  # every parameter exactly one depth
    assert lm.num_blocks >= 2
    assert lm.names_at(0), "embeddings/stem must be depth 0"
    head = lm.names_at(lm.head_depth)
    assert head and all(any(k in n for k in ("classifier", "score", "fc", "head", "projector")) for n in head)
    for d in range(1, lm.num_blocks + 1):
        assert lm.names_at(d), f"block depth {d} is empty"
    # depths follow the forward order: no block parameter registered before an embedding parameter
    order = {n: i for i, n in enumerate(names)}
    assert max(order[n] for n in lm.names_at(0)) < min(order[n] for n in lm.names_at(lm.num_blocks))


@pytest.mark.parametrize("name", ["vit", "bert", "gpt2", "convnext", "timm_vit", "timm_wrapped"])
def test_layer_map_through_peft_lora(name):
    import peft

    from hftl.model.adapters import default_targets

    model = tiny_models.ALL[name]()
    plain = build_layer_map(model)
    head = find_head(model)
    targets = default_targets(model, head) if name != "convnext" and name != "timm_wrapped" else ["pwconv1", "conv2"]
    if name == "timm_wrapped":
        targets = ["conv1", "conv2"]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=targets, modules_to_save=head))
    lm = build_layer_map(wrapped)
    assert set(lm.depth) == {n for n, _ in wrapped.named_parameters()}
    assert lm.labels == plain.labels
    lora = [n for n in lm.depth if "lora_" in n]
    assert lora
    for n in lora:  # a LoRA parameter takes the depth of the layer it adapts
        base = n.split(".lora_")[0] + ".base_layer.weight"
        assert lm.depth[n] == lm.depth[base], n
    saved = [n for n in lm.depth if "modules_to_save" in n]
    assert saved and all(lm.depth[n] == lm.head_depth for n in saved)


def test_unknown_architecture_names_the_override():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.mid = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

    with pytest.raises(ValueError, match="Cannot find the repeated blocks of Odd") as raised:
        build_layer_map(Odd())
    assert "strategy" not in str(raised.value)  # hooks raise plain errors; the strategy names the recipe key
    with pytest.raises(HftlError, match="strategy.layer_map.blocks"):
        layer_map_for(Odd(), StrategySection())
    lm = build_layer_map(Odd(), blocks_regex=r"^(inp|mid)\.", head_patterns=["out"])
    assert lm.depth["inp.weight"] == 1 and lm.depth["mid.weight"] == 2 and lm.depth["out.weight"] == lm.head_depth


# ------------------------------------------------------------------------------------------ helpers


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


class EpochSnapshots(TrainerCallback):
    def __init__(self):
        self.at_epoch_end: list[dict[str, torch.Tensor]] = []
        self.start = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = snapshot(model)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        self.at_epoch_end.append(snapshot(model))


class GroupLRs(TrainerCallback):
    """Optimizer param-group LRs when step 0 begins and after the first scheduler step."""

    def __init__(self):
        self.step0 = self.step1 = None
        self.optimizer = None

    def on_step_begin(self, args, state, control, optimizer=None, **kw):
        lrs = [(g["name"], g["lr"], list(g["param_names"])) for g in optimizer.param_groups]
        if state.global_step == 0:
            self.step0 = lrs
        elif state.global_step == 1 and self.step1 is None:
            self.step1 = lrs


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b)


# ------------------------------------------------------------------------------------------ freezing


def test_freeze_backbone_keeps_backbone_bit_identical_with_weight_decay(text_recipe):
    snaps = EpochSnapshots()
    r = hftl.train(text_recipe(strategy={"freeze": "backbone"},
                               training={"weight_decay": 0.1, "num_train_epochs": 2}), callbacks=[snaps])
    lm = r.plan.layer_map
    end = snapshot(r.model)
    for n in lm.depth:
        if lm.depth[n] == lm.head_depth:
            assert not same(end[n], snaps.start[n]), f"head {n} did not train"
        else:
            assert same(end[n], snaps.start[n]), f"frozen {n} moved"


def test_unfreeze_patterns_win_over_freeze(text_recipe):
    r = hftl.train(text_recipe(strategy={"freeze": "backbone", "unfreeze": ["*.LayerNorm.*"]},
                               training={"num_train_epochs": 1}))
    trainable = {n for n, p in r.model.named_parameters() if p.requires_grad}
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in trainable
    assert "bert.encoder.layer.0.output.dense.weight" not in trainable
    assert "classifier.weight" in trainable


def test_partial_preset_freezes_lower_half(text_recipe):
    r = hftl.train(text_recipe(strategy={"preset": "partial"}, training={"num_train_epochs": 1}))
    lm = r.plan.layer_map  # 2 blocks: depths 0 (emb) and 1 (block 0) frozen
    for n, p in r.model.named_parameters():
        assert p.requires_grad == (lm.depth[n] >= lm.num_blocks // 2 + 1), n


# ------------------------------------------------------------------------------------------ gradual unfreezing


def test_gradual_unfreezing_trains_layers_only_after_their_epoch(text_recipe):
    """Trap: Trainer.create_optimizer keeps only requires_grad=True params; a layer unfrozen later
    would never train. Each depth must be bit-identical until its epoch, and change after it."""
    snaps = EpochSnapshots()
    r = hftl.train(text_recipe(strategy={"gradual_unfreezing": {"every_epochs": 1}},
                               training={"num_train_epochs": 3, "weight_decay": 0.1}), callbacks=[snaps])
    lm = r.plan.layer_map
    head, post, top_block = lm.head_depth, lm.head_depth - 1, lm.head_depth - 2
    unfreezes_at = {head: 0, post: 1, top_block: 2}
    for n, d in lm.depth.items():
        history = [snaps.start[n]] + [s[n] for s in snaps.at_epoch_end]  # start, end of epoch 0, 1, 2
        epoch = unfreezes_at.get(d)
        if epoch is None:  # never unfrozen in 3 epochs: bit-identical all along (weight decay is on)
            assert all(same(h, history[0]) for h in history), f"{n} (depth {d}) moved while frozen"
            continue
        for e in range(3):
            changed = not same(history[e + 1], history[e])
            assert changed == (e >= epoch), f"{n} depth {d}: changed={changed} in epoch {e}, unfreezes at {epoch}"
    assert set(r.plan.unfreeze_at) >= {head, post, top_block}


def test_gradual_unfreezing_explicit_schedule_by_steps(text_recipe):
    snaps = EpochSnapshots()
    r = hftl.train(text_recipe(strategy={"gradual_unfreezing": {"schedule": {0: "head", 4: ["post", 2]}, "by": "step"}},
                               training={"num_train_epochs": 1}), callbacks=[snaps])
    lm = r.plan.layer_map
    end = snapshot(r.model)
    for n, d in lm.depth.items():
        moved = not same(end[n], snaps.start[n])
        assert moved == (d >= 2), f"{n} depth {d}"


# ------------------------------------------------------------------------------------------ discriminative LR


def test_param_groups_carry_layer_decay_learning_rates(text_recipe):
    lrs = GroupLRs()
    r = hftl.train(text_recipe(strategy={"discriminative_lr": {"layer_decay": 0.5}},
                               training={"num_train_epochs": 1, "learning_rate": 1e-3, "weight_decay": 0.01}),
                   callbacks=[lrs])
    lm = r.plan.layer_map
    assert lrs.step0 and lrs.step1
    seen = set()
    for (name, lr0, names), (_, lr1, _) in zip(lrs.step0, lrs.step1):
        d = lm.depth[names[0]]
        assert all(lm.depth[n] == d for n in names)
        assert lr0 == pytest.approx(1e-3 * 0.5 ** (lm.head_depth - d), rel=1e-9)
        # the linear schedule scales every group by the same factor
        assert lr1 / lr0 == pytest.approx(lrs.step1[0][1] / lrs.step0[0][1], rel=1e-9)
        seen.update(names)
    assert seen == set(lm.depth)  # every trainable parameter is in exactly one group
    # Trainer's weight-decay rule is kept: biases and LayerNorm weights get none
    for g in r.trainer.optimizer.param_groups:
        for n in g["param_names"]:
            if n.endswith("bias") or "LayerNorm" in n:
                assert g["weight_decay"] == 0.0, n


def test_layer_decay_counts_only_depths_that_hold_parameters(text_recipe):
    """Trap: mean pooling swaps BERT's pooler for a parameter-free one, leaving the depth after the blocks empty;
    the top block then trained at decay**2 of the head. Only depths that hold parameters count a step."""
    from hftl.recipe import load_recipe
    from hftl.training.setup import setup

    s = setup(load_recipe(text_recipe(model={"pooling": "mean"}, strategy={"discriminative_lr": {"layer_decay": 0.5}},
                                      training={"learning_rate": 1e-3})))
    lm = s.plan.layer_map
    assert lm.names_at(lm.head_depth - 1) == []  # the pooler holds nothing now
    by_depth = {lm.depth[n]: a.lr for n, a in s.plan.lrs.items()}
    assert by_depth[lm.head_depth] == pytest.approx(1e-3)
    assert by_depth[lm.head_depth - 2] == pytest.approx(1e-3 * 0.5)  # the top block: one step below the head
    assert by_depth[0] == pytest.approx(1e-3 * 0.5 ** (lm.num_blocks + 1))


def test_head_and_backbone_lr_interpolate_geometrically(text_recipe):
    lrs = GroupLRs()
    r = hftl.train(text_recipe(strategy={"discriminative_lr": {"head_lr": 1e-2, "backbone_lr": 1e-4}},
                               training={"num_train_epochs": 1}), callbacks=[lrs])
    lm = r.plan.layer_map
    by_depth = {lm.depth[names[0]]: lr for _, lr, names in lrs.step0}
    assert by_depth[lm.head_depth] == pytest.approx(1e-2)
    assert by_depth[0] == pytest.approx(1e-4)
    ratios = [by_depth[d + 1] / by_depth[d] for d in range(lm.head_depth)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_explicit_lr_groups(text_recipe):
    lrs = GroupLRs()
    hftl.train(text_recipe(strategy={"discriminative_lr": {"lr_groups": [
        {"name": "head", "patterns": ["classifier.*"], "lr": 5e-3},
        {"name": "emb", "patterns": ["bert.embeddings"], "lr": 1e-5}]}},
        training={"num_train_epochs": 1, "learning_rate": 1e-3}), callbacks=[lrs])
    for name, lr, names in lrs.step0:
        expected = {"head": 5e-3, "emb": 1e-5, "default": 1e-3}[name]
        assert lr == pytest.approx(expected), name
        if name == "head":
            assert all(n.startswith("classifier.") for n in names)


LR_MODES = {
    "none": None,
    "layer_decay": {"layer_decay": 0.5},
    "head_lr": {"head_lr": 5e-3},
    "head_and_backbone_lr": {"head_lr": 1e-2, "backbone_lr": 1e-4},
    "lr_groups": {"lr_groups": [{"name": "head", "patterns": ["*classifier*"], "lr": 1e-3},
                                {"name": "emb", "patterns": ["*embeddings*"], "lr": 1e-5}]},
}


def _table_lrs(table: str) -> dict[int, str]:
    """depth -> the plan table's lr cell."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].isdigit():
            out[int(cells[0])] = cells[5]
    return out


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("mode", sorted(LR_MODES))
def test_plan_and_optimizer_read_one_lr_assignment(mode, peft, text_recipe):
    """Trap: the plan (and plan.md, the card) once showed training.learning_rate for lr_groups while the
    optimizer trained at the groups' own rates. Both read one assignment: compared parameter by parameter."""
    strategy = {"discriminative_lr": LR_MODES[mode]} if LR_MODES[mode] else {}
    r = hftl.train(text_recipe(strategy=strategy, peft={"method": "lora"} if peft else None,
                               training={"max_steps": 1, "learning_rate": 3e-3, "weight_decay": 0.01},
                               data={"max_train_samples": 16, "max_eval_samples": 8}))
    optimizer_lr = {n: g["initial_lr"] for g in r.trainer.optimizer.param_groups for n in g["param_names"]}
    assert set(optimizer_lr) == set(r.plan.lrs) == r.plan.trainable.candidates
    for name, lr in optimizer_lr.items():
        assert r.plan.lrs[name].lr == lr, name
    lm = r.plan.layer_map
    shown = _table_lrs(r.plan.table())
    for d, cell in shown.items():
        lrs = sorted({lr for n, lr in optimizer_lr.items() if lm.depth[n] == d})
        assert cell == (" / ".join(f"{lr:.2e}" for lr in lrs) if lrs else "-"), (d, cell)
    assert (r.output_dir / "plan.md").read_text().strip() == r.plan.table().strip()
    if mode == "lr_groups":  # the groups' own rates, not training.learning_rate
        assert {optimizer_lr[n] for n in optimizer_lr if "classifier" in n} == {1e-3}
        assert {optimizer_lr[n] for n in optimizer_lr if "embeddings" in n} <= {1e-5}


def test_lr_group_pattern_matching_nothing_names_the_key(text_recipe):
    recipe = text_recipe(strategy={"discriminative_lr": {"lr_groups": [
        {"name": "head", "patterns": ["classifier.*"], "lr": 1e-3},
        {"name": "typo", "patterns": ["bert.embedings"], "lr": 1e-5}]}})
    with pytest.raises(HftlError, match=r"'strategy\.discriminative_lr\.lr_groups\[1\]\.patterns': pattern 'bert\.embedings'"):
        hftl.train(recipe)
    assert not hftl.load_recipe(recipe).output_dir.exists()


# ------------------------------------------------------------------------------------------ BatchNorm


def _bn_buffers(state):
    return {n: t for n, t in state.items() if any(k in n for k in ("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("freeze_bn,strategy,expect_fixed", [
    (True, {"preset": "full"}, True),       # flag on: statistics fixed although every weight trains
    (None, {"freeze": "backbone"}, True),   # frozen layers: statistics fixed whatever the flag
    (False, {"freeze": "backbone"}, True),
    (False, {"preset": "full"}, False),     # control: a training BN does update (the test can fail)
])
def test_batchnorm_statistics(image_recipe, resnet_dir, freeze_bn, strategy, expect_fixed):
    """Trap: the Trainer calls model.train() inside every training_step, after all callbacks."""
    if freeze_bn is not None:
        strategy = {**strategy, "freeze_batchnorm": freeze_bn}
    snaps = EpochSnapshots()
    r = hftl.train(image_recipe(model_dir=resnet_dir, strategy=strategy, training={"num_train_epochs": 1}),
                   callbacks=[snaps])
    before, after = _bn_buffers(snaps.start), _bn_buffers(snapshot(r.model))
    assert before
    fixed = all(same(before[n], after[n]) for n in before)
    assert fixed == expect_fixed
    assert not same(snaps.start["classifier.1.weight"], r.model.state_dict()["classifier.1.weight"])
    if strategy.get("preset") == "full":
        conv = "resnet.embedder.embedder.convolution.weight"
        assert not same(snaps.start[conv], r.model.state_dict()[conv]), "backbone should train"


# ------------------------------------------------------------------------------------------ partial transfer


def test_reinit_from_depth_reinitialises_upper_layers_only(text_recipe, bert_dir):
    from transformers import AutoModelForSequenceClassification

    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(text_recipe(strategy={"reinit": {"from_depth": 2}})))
    original = AutoModelForSequenceClassification.from_pretrained(bert_dir).state_dict()
    lm = s.plan.layer_map
    now = s.model.state_dict()
    for n, d in lm.depth.items():
        if n.startswith("classifier"):
            continue
        if d >= 2 and n.endswith("dense.weight"):
            assert not same(now[n], original[n]), f"{n} was not re-initialised"
            assert now[n].std().item() == pytest.approx(s.model.config.initializer_range, rel=0.35)
        elif d < 2:
            assert same(now[n], original[n]), f"{n} below from_depth changed"


def test_reinit_resets_batchnorm_running_statistics(image_recipe, resnet_dir, tmp_path):
    """A re-initialised conv net starts from scratch: its BatchNorm buffers too, not the checkpoint's statistics."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hftl.training.setup import setup

    model = AutoModelForImageClassification.from_pretrained(resnet_dir)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.5)
            m.running_var.fill_(3.0)
    model.save_pretrained(tmp_path / "trained")
    AutoImageProcessor.from_pretrained(resnet_dir).save_pretrained(tmp_path / "trained")
    s = setup(hftl.load_recipe(image_recipe(model_dir=tmp_path / "trained", strategy={"reinit": {"from_depth": 0}})))
    norms = [m for m in s.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for m in norms:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))


# ------------------------------------------------------------------------------------------ resume


def test_resume_mid_gradual_unfreezing_matches_uninterrupted_run(text_recipe, tmp_path):
    """Resuming restores the frozen/unfrozen stage and the param groups, and ends on the same weights."""
    base = text_recipe(strategy={"gradual_unfreezing": {"every_epochs": 1}, "discriminative_lr": {"layer_decay": 0.5}},
                       training={"num_train_epochs": 3, "save_strategy": "epoch", "save_total_limit": None,
                                 "output_dir": str(tmp_path / "full"), "weight_decay": 0.1})
    full = hftl.train(base)
    expected = snapshot(full.model)
    ckpt = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]  # end of epoch 0
    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(ckpt, resumed_dir / ckpt.name)
    resumed = hftl.train({**base, "training": {**base["training"], "output_dir": str(resumed_dir),
                                               "resume_from_checkpoint": True}})
    got = snapshot(resumed.model)
    for n in expected:
        assert torch.allclose(got[n], expected[n], atol=1e-6), n
    assert resumed.metrics["eval_accuracy"] == full.metrics["eval_accuracy"]


# ------------------------------------------------------------------------------------------ plan


def test_plan_table_lists_every_depth(text_recipe):
    from hftl.api import plan

    table = plan(text_recipe(strategy={"gradual_unfreezing": {"every_epochs": 1},
                                       "discriminative_lr": {"layer_decay": 0.5}},
                             training={"learning_rate": 1e-3}))
    lines = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| depth")]
    assert len(lines) == 5  # embeddings, 2 blocks, pooler, head
    assert "epoch 1" in table and "start" in table and "not yet" in table
    assert "1.00e-03" in table and "5.00e-04" in table


def test_freezing_everything_is_an_error(text_recipe):
    with pytest.raises(HftlError, match="no parameter to train"):
        hftl.train(text_recipe(strategy={"freeze": {"patterns": ["*"]}}))


def test_pattern_matching_nothing_is_an_error(text_recipe):
    with pytest.raises(HftlError, match="matches no parameter"):
        hftl.train(text_recipe(strategy={"freeze": {"patterns": ["encoder.nothing.*"]}}))
