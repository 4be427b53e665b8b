"""Code hftl ships inside a run directory, for loaders that do not have hftl (transformers' trust_remote_code)."""
