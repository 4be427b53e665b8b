"""hftl: transfer learning and parameter-efficient fine-tuning from one YAML recipe, on the Hugging Face stack."""

from hftl.errors import HftlError, RecipeError
from hftl.recipe import Recipe, load_recipe

__version__ = "0.1.0"
__all__ = ["HftlError", "Recipe", "RecipeError", "TrainResult", "load_model", "load_recipe", "plan", "train"]


def __getattr__(name):
    # The training stack (torch, transformers) loads only when used: `hftl validate` stays fast.
    if name in ("train", "plan", "load_model", "TrainResult"):
        from hftl import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")
