"""ULMFiT-style gradual unfreezing (Howard & Ruder 2018, arXiv:1801.06146): from the head down.

`TrainableSet` owns what is trainable *now* inside the set that may ever train (`candidates`).
`GradualUnfreezing` is the TrainerCallback that moves it along a schedule of epochs or steps.

Two ways to hold a layer frozen:
- single process: `requires_grad=False` (no gradient is even computed);
- DDP: DistributedDataParallel only all-reduces parameters that required grad when it wrapped
  the model, so a layer unfrozen later would train differently on every rank. There, every
  candidate requires grad from the start and the gradients of the frozen ones are set to None
  after backward (None, not zero: AdamW would still decay and move a zero-grad weight).
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import TrainerCallback

from hftl.hooks.freezing import BatchNormFreezer, FrozenEval, set_trainable
from hftl.hooks.layers import LayerMap

logger = logging.getLogger(__name__)


class TrainableSet:
    def __init__(self, model: nn.Module, layer_map: LayerMap, candidates: set[str], *,
                 freeze_all_batchnorm: bool = False, mask_grads: bool = False):
        self.model = model
        self.layer_map = layer_map
        self.candidates = set(candidates)
        self.freeze_all_batchnorm = freeze_all_batchnorm
        self.mask_grads = mask_grads
        self.params = dict(model.named_parameters())
        self.batchnorm = BatchNormFreezer(model)
        self.frozen_eval = FrozenEval(model)
        self.active: set[str] = set()
        self._masked: list[nn.Parameter] = []

    def activate(self, names: set[str]) -> None:
        """Make exactly `names` (within the candidates) train from now on."""
        self.active = set(names) & self.candidates
        set_trainable(self.model, self.candidates if self.mask_grads else self.active)
        self._masked = [self.params[n] for n in self.candidates - self.active] if self.mask_grads else []
        frozen = set(self.params) - self.active
        n_bn = self.batchnorm.update(frozen, self.freeze_all_batchnorm)
        # Only a backbone frozen as a whole runs in eval mode (a fixed feature extractor, as in Keras);
        # partial freezing and PEFT keep dropout in frozen layers, as the plain Trainer/PEFT way does.
        head = self.layer_map.head_depth
        self.frozen_eval.update(self.model, frozen, all(self.layer_map.depth[n] == head for n in self.active))
        logger.info("trainable: %d/%d parameter tensors; %d BatchNorm layers with fixed statistics",
                    len(self.active), len(self.params), n_bn)

    def activate_depths(self, depths: set[int]) -> None:
        self.activate({n for n in self.candidates if self.layer_map.depth[n] in depths})

    def after_backward(self) -> None:
        for p in self._masked:
            p.grad = None

    def candidate_depths(self) -> list[int]:
        """Depths holding something trainable, head first: the order gradual unfreezing follows."""
        present = {self.layer_map.depth[n] for n in self.candidates}
        return sorted(present, reverse=True)


def build_stages(layer_map: LayerMap, order: list[int], spec) -> tuple[str, list[tuple[int, set[int]]]]:
    """-> (unit, [(at, depths trainable from then on)]) with cumulative depth sets."""
    if spec.schedule is not None:
        unit = spec.by
        stages, acc = [], set()
        for at in sorted(spec.schedule):
            for item in spec.schedule[at]:
                acc |= set(order) if item == "all" else {layer_map.resolve(item)}
            stages.append((at, set(acc)))
        if not stages or stages[0][0] != 0:
            raise ValueError("the schedule must say what trains at 0, e.g. {0: head}")
        return unit, stages
    every, unit = (spec.every_epochs, "epoch") if spec.every_epochs else (spec.every_steps, "step")
    return unit, [(i * every, set(order[: i + 1])) for i in range(len(order))]


class GradualUnfreezing(TrainerCallback):
    def __init__(self, trainable: TrainableSet, unit: str, stages: list[tuple[int, set[int]]]):
        self.trainable = trainable
        self.unit = unit
        self.stages = stages
        self.current: int | None = None

    def stage_at(self, epoch: float, step: int) -> int:
        now = int(epoch + 1e-6) if self.unit == "epoch" else step
        return max(i for i, (at, _) in enumerate(self.stages) if at <= now)

    def _sync(self, state) -> None:
        i = self.stage_at(state.epoch or 0.0, state.global_step)
        if i != self.current:
            self.current = i
            self.trainable.activate_depths(self.stages[i][1])
            logger.info("gradual unfreezing: stage %d at %s %s, depths %s trainable",
                        i, self.unit, self.stages[i][0], sorted(self.stages[i][1]))

    # on_train_begin runs after a resumed TrainerState is loaded, so a resumed run starts at its stage.
    def on_train_begin(self, args, state, control, **kwargs):
        self._sync(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._sync(state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.unit == "step":
            self._sync(state)
