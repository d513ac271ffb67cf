#!/usr/bin/env bash
# Make LXT (the AttnLRP authors' package) importable for `attribution_cost.py --lxt`,
# without touching relcomp's pinned environment: lxt 2.1 and its pure-Python needs go to
# .peers/lxt (git-ignored), used only through PYTHONPATH:
#
#   bash benchmarks/peers/setup_lxt.sh
#   PYTHONPATH=.peers/lxt python benchmarks/attribution_cost.py --lxt --skip-bilrp --output ...
#
# lxt 2.1 imports torchvision for its ViT patch at import time; no torchvision wheel
# matches torch 2.13.0 here, so a stub module stands in for it (LXT's BERT patch, the
# one timed, never uses it). LXT is a benchmark peer only, never a relcomp dependency.
set -euo pipefail
target="${1:-.peers/lxt}"
python -m pip install --quiet --no-deps --target "$target" lxt==2.1 zennit tabulate
mkdir -p "$target/torchvision/models"
: > "$target/torchvision/__init__.py"
: > "$target/torchvision/models/__init__.py"
echo "from torch import nn  # stub: lxt's ViT patch map reads vision_transformer.nn only" \
  > "$target/torchvision/models/vision_transformer.py"
python - "$target" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import lxt.efficient  # noqa: F401
print(f"lxt importable from {sys.argv[1]}")
PY
