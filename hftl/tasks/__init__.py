"""Task families behind one contract (`Task`, see base.py); the recipe's allowed tasks come from the registry.

The built-in tasks register themselves with `register_task` when imported here, as a task of your own does."""

from hftl.tasks import (  # noqa: F401  (each registers its task)
    audio_classification,
    causal_lm,
    image_classification,
    image_text_to_text,
    seq2seq,
    text_classification,
    token_classification,
    zero_shot,
)
from hftl.tasks.base import Task, get_task, register_task, task_names

__all__ = ["Task", "get_task", "register_task", "task_names"]
