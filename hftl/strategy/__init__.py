"""Recipe `strategy:` -> the hooks (plan.py: every parameter's learning rate resolved once), the plan table
(table.py) and `preset: auto`'s choice from evidence on the data (auto.py)."""

from hftl.strategy.plan import TransferPlan, apply_reinit, check_patterns, layer_map_for, plan_strategy
from hftl.strategy.table import plan_table

__all__ = ["TransferPlan", "apply_reinit", "check_patterns", "layer_map_for", "plan_strategy", "plan_table"]
