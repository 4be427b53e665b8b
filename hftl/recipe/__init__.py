"""The recipe: YAML safe-load, dotted overrides, a typed (pydantic v2) schema and clear errors.

Only this package reads YAML (yaml_io.py). One module per group of schema sections (model, data, strategy, peft,
blocks, schema: the whole recipe and hub), training.py (TrainingArguments defaults and checks), checks.py (rules
across sections) and load.py (`load_recipe`, which collects every problem before any weights load).
"""

from hftl.recipe.base import Section
from hftl.recipe.blocks import (
    ContinualSection,
    ContrastiveSection,
    DistillSection,
    EmaSection,
    EwcSection,
    GenerationSection,
    RegularizationSection,
    ReplaySection,
    SelfTrainingSection,
    StudentFromTeacher,
)
from hftl.recipe.data import AugmentSection, DataSection, SpectrogramSection
from hftl.recipe.load import load_recipe
from hftl.recipe.model import ModelSection
from hftl.recipe.peft import PeftSection
from hftl.recipe.schema import HubSection, Recipe
from hftl.recipe.strategy import (
    PRESETS,
    DiscriminativeLR,
    FreezeSpec,
    GradualUnfreezing,
    LayerMapOverride,
    LrGroup,
    Reinit,
    StrategySection,
)
from hftl.recipe.yaml_io import apply_overrides, parse_override

__all__ = [
    "PRESETS", "AugmentSection", "ContinualSection", "ContrastiveSection", "DataSection", "DiscriminativeLR", "DistillSection", "EmaSection",
    "EwcSection", "FreezeSpec", "GenerationSection", "GradualUnfreezing", "HubSection", "LayerMapOverride", "LrGroup",
    "ModelSection", "PeftSection", "Recipe", "RegularizationSection", "Reinit", "ReplaySection", "Section",
    "SelfTrainingSection", "SpectrogramSection", "StrategySection", "StudentFromTeacher", "apply_overrides",
    "load_recipe", "parse_override",
]
