"""hftl: transfer learning and parameter-efficient fine-tuning from one YAML recipe, on the Hugging Face stack."""

from hftl.errors import HftlError, RecipeError
from hftl.recipe import Recipe, load_recipe

__version__ = "0.1.0"
__all__ = ["HftlError", "Recipe", "RecipeError", "TrainResult", "adapt", "evaluate", "export", "load_model", "load_recipe", "lr_find", "plan", "predict", "train"]


def __getattr__(name):
    # The training stack (torch, transformers) loads only when used: `hftl validate` stays fast.
    if name in ("train", "plan", "TrainResult"):
        from hftl import pipeline

        return getattr(pipeline, name)
    if name == "load_model":
        from hftl.runs.load import load_model

        return load_model
    if name == "adapt":
        from hftl.self_training import adapt

        return adapt
    if name == "lr_find":
        from hftl.lr_range import lr_find

        return lr_find
    if name == "predict":
        from hftl.runs.predict import predict

        return predict
    if name == "export":
        from hftl.runs.export import export

        return export
    if name == "evaluate":
        from hftl.runs.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")
