"""The optional training blocks, one module each, behind one protocol (base.py). A run's features are the ones its
recipe uses, in this order (replay rows before the transfer set; the previous run's Fisher before the body is tuned;
the weight average copied in before forgetting is measured)."""

from hftl.training.features.base import Feature, overrides
from hftl.training.features.continual import Continual
from hftl.training.features.contrastive import Contrastive
from hftl.training.features.distillation import Distill
from hftl.training.features.ema import Ema
from hftl.training.features.head_fit import HeadFit
from hftl.training.features.mixing import Regularization
from hftl.training.features.tta import Tta
from hftl.training.features.wise_ft import WiseFt

FEATURES = (Continual, Distill, Contrastive, Regularization, Ema, Tta, WiseFt, HeadFit)

__all__ = ["FEATURES", "Feature", "for_recipe", "overrides"]


def for_recipe(recipe, task) -> list[Feature]:
    """The features this recipe turns on."""
    return [f for f in (cls.from_recipe(recipe, task) for cls in FEATURES) if f is not None]
