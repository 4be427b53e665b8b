"""The model: built from the checkpoint with a head for the data's labels (build.py), wrapped by PEFT
(adapters.py), pooled as the checkpoint was trained (pooling.py, with the code shipped inside runs: remote/)."""

from hftl.model.adapters import adapter_summary, build_peft_model, default_targets
from hftl.model.build import (build_model, is_local_path, load_processor, model_device, resolve_path,
                              transformers_errors_only)
from hftl.model.pooling import apply_pooling, load_portable, make_portable, needs_remote_code, pooling_of

__all__ = ["adapter_summary", "apply_pooling", "build_model", "build_peft_model", "default_targets",
           "is_local_path", "load_portable", "load_processor", "make_portable", "model_device", "needs_remote_code",
           "pooling_of", "resolve_path", "transformers_errors_only"]
