"""Task registry: each task module knows its Auto class, its preprocessing and its collator."""

from __future__ import annotations

from types import ModuleType

from hftl.errors import HftlError, did_you_mean

_TASKS: dict[str, str] = {
    "image-classification": "hftl.tasks.image_classification",
    "text-classification": "hftl.tasks.text_classification",
}


def get_task(name: str) -> ModuleType:
    """The module implementing `name`: AUTO_MODEL, PEFT_TASK_TYPE, load_processor(), prepare()."""
    import importlib

    if name not in _TASKS:
        raise HftlError(f"Unknown task '{name}'; allowed: {', '.join(_TASKS)}.{did_you_mean(name, _TASKS)}")
    return importlib.import_module(_TASKS[name])


def task_names() -> list[str]:
    return list(_TASKS)
