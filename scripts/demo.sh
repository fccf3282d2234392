#!/usr/bin/env bash
# Set up ./.venv and run the whole pipeline once, offline, on the built-in MAST emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec .venv/bin/skyassets demo "$@"
