"""Faults a long run must survive: Ctrl-C / SIGTERM, non-finite losses, partial checkpoints."""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from hftl.errors import HftlError

logger = logging.getLogger(__name__)
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class Interrupted(HftlError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None. trainer_state.json is the Trainer's last write."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    weights = [p for p in path.iterdir() if p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json")
               or p.name in ("pytorch_model.bin", "adapter_model.bin")]
    if not weights:
        return "no model weights"
    from safetensors import safe_open

    for w in weights:
        if w.suffix == ".safetensors":
            try:
                with safe_open(str(w), "pt") as f:
                    f.keys()
            except Exception:  # safetensors raises its own error types for truncated headers
                return f"{w.name} is truncated or corrupt"
    return None


def last_good_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint-* in output_dir; incomplete newer ones are reported and skipped."""
    if not output_dir.is_dir():
        return None
    found = sorted((p for p in output_dir.iterdir() if p.is_dir() and _CKPT.match(p.name)),
                   key=lambda p: int(_CKPT.match(p.name).group(1)), reverse=True)
    for ckpt in found:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        logger.warning("skipping %s: %s", ckpt, problem)
    return None


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. All ranks stop together."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        signum = self.signum or 0
        if args.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([signum], dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            self.signum = signum
            control.should_save = True
            control.should_training_stop = True
        return control


def check_loss(loss: torch.Tensor, step: int, output_dir: Path, policy: str, world_size: int) -> bool:
    """True when the loss is finite. A non-finite loss stops the run ('stop') or the step is skipped ('skip')."""
    # Stays on the device until the one .item() below (the Trainer syncs on the loss each step anyway).
    bad = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # every rank takes the same branch
    if bad.item() == 0:
        return True
    if policy == "skip":
        logger.warning("non-finite loss (%s) at step %d: step skipped (on_nan_loss: skip)", loss.item(), step)
        return False
    last = last_good_checkpoint(output_dir)
    raise HftlError(
        f"The training loss became {loss.item()} at optimizer step {step}. Last good checkpoint: "
        f"{last or 'none'}. Lower training.learning_rate, set training.max_grad_norm, or set on_nan_loss: skip "
        "to skip such steps; resume with training.resume_from_checkpoint: true.")
