"""Task families behind one contract (`Task`, see base.py); the recipe's allowed tasks come from the registry."""

from hftl.tasks.base import Task, get_task, register_task, task_names

__all__ = ["Task", "get_task", "register_task", "task_names"]
