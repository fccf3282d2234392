#!/usr/bin/env bash
# Set up ./.venv and run the linter (ruff, configured in pyproject.toml) over the whole tree.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec .venv/bin/ruff check .
