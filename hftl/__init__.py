"""hftl: transfer learning and parameter-efficient fine-tuning from one YAML recipe, on the Hugging Face stack.

The public API lives in hftl/api.py; it loads on first use, so `import hftl` stays light."""

from hftl.errors import HftlError, RecipeError

__version__ = "0.1.0"
__all__ = ["HftlError", "Recipe", "RecipeError", "TrainResult", "adapt", "evaluate", "export", "load_model",
           "load_recipe", "lr_find", "plan", "predict", "serve", "serve_app", "sweep", "train"]


def __getattr__(name):
    if name in __all__:
        from hftl import api

        return getattr(api, name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")
